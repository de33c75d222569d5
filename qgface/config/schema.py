"""The schema of the typed configuration tree: one dataclass per section.

Every key has a default, a type and a one-line meaning (the string under
the field), and each section validates itself in ``__post_init__``, naming the dotted key. Reading YAML
files and ``key=value`` overrides into this tree is :mod:`qgface.config.loading`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgface.vocab import choices, synthetic
from qgface.vocab.benchmarks import (
    DEFAULT_BENCHMARKS,
    IJB_PROTOCOLS,
    SCFACE_ALIGNED_DIR,
    TINYFACE_ALIGNED_DIR,
    VALIDATION_BENCHMARKS,
)


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


@dataclass
class DataConfig:
    root: str = ""
    """training data: a folder with train.rec/.idx (InsightFace) or <identity>/<image> folders; empty = synthetic"""
    synthetic_dir: str = "logs/synthetic"
    """where the synthetic mixed-quality dataset is generated and cached when root is empty"""
    synthetic_identities: int = synthetic.IDENTITIES
    """identities in the synthetic training set"""
    synthetic_images_per_identity: int = synthetic.IMAGES_PER_IDENTITY
    """images per identity in the synthetic training set"""
    synthetic_seed: int = 0
    """seed of the synthetic dataset (identities, variations, degradations)"""
    synthetic_eval_identities: int = synthetic.EVAL_IDENTITIES
    """identities in each synthetic evaluation set (disjoint from the training identities)"""
    batch_size: int = 64
    """source images per rank and step; the backbone sees 2x this many with two views"""
    num_workers: int = -1
    """DataLoader worker processes per rank (0 = load in the training process); -1 = this rank's share of the CPUs less one, at most 8"""
    prefetch_factor: int = 0
    """batches each loader worker prepares ahead; 0 = enough for 4 batches in flight per rank (at least 2 per worker)"""
    views: str = "lh"
    """view recipe (docs/method.md §2): lh = QGFace L/H pairing, adaface = AdaFace augmentation (A-C), flip = baseline"""
    lowres_range: list[float] = field(default_factory=lambda: [0.1, 0.5])
    """lh: side ratio range of the random rescale of the L view"""
    jpeg_quality: int = 75
    """lh: JPEG quality of the L view's compression round trip"""
    crop_p: float = 0.2
    """lh: probability of a random resized crop of the L view"""
    photometric_p: float = 0.2
    """lh: probability of brightness/contrast/saturation jitter of the L view"""
    rotation_p: float = 0.0
    """lh: probability of a random rotation up to 45 degrees of the L view"""
    adaface_p: float = 0.2
    """adaface: probability of each of crop, low-resolution rescale and colour jitter"""
    adaface_crop: bool = True
    """adaface: include the zero-padded crop step; false only to study its effect (docs/ablation.md)"""

    def __post_init__(self) -> None:
        _check_choice("data.views", self.views, choices.VIEW_KINDS)
        _check_range("data.lowres_range", self.lowres_range, 0.0, 1.0)
        for key in ("crop_p", "photometric_p", "rotation_p", "adaface_p"):
            _check_probability(f"data.{key}", getattr(self, key))
        _check_positive("data.batch_size", self.batch_size)
        if self.num_workers < -1:
            raise ConfigError(
                f"data.num_workers must be >= 0, or -1 for a count from the CPUs; got {self.num_workers!r}"
            )
        if self.prefetch_factor < 0:
            raise ConfigError(f"data.prefetch_factor must be >= 0 (0 = automatic); got {self.prefetch_factor!r}")


@dataclass
class ModelConfig:
    backbone: str = "ir50"
    """backbone: ir18, ir34, ir50, ir101, ir_se_50, ir_se_101, or ir_tiny for CPU tests and demos"""


@dataclass
class HeadConfig:
    kind: str = "adaface"
    """margin head: adaface, arcface or cosface (docs/method.md §3)"""
    m: float = 0.4
    """margin"""
    h: float = 0.333
    """AdaFace margin-scaler concentration h"""
    s: float = 64.0
    """logit scale"""
    t_alpha: float = 0.01
    """momentum of the running feature-norm statistics"""
    quality_scale: float = 0.0
    """QS threshold tau_q on the classification logits; 0 disables the quality scaler"""
    quality_scale_warmup: bool = False
    """ramp tau_q linearly from 0 over the first contrast.joint_point epochs"""
    chunk_elems: int = 0
    """logits the head holds at once (rows per chunk = chunk_elems // classes); 0 = 16M on CPU, 256M on GPU"""
    tf32: bool = False
    """let the head's fp32 matmuls use TF32 on an Ampere+ GPU (faster; ~1e-3 relative error in the cosines)"""
    partial_fc: bool = False
    """shard the class proxies and their momentum over the ranks (Partial FC, README "Partial FC"); for 100k+ identities"""
    sample_rate: float = 1.0
    """partial_fc: share of each rank's classes used per step (every positive is kept); 1.0 = all classes"""

    def __post_init__(self) -> None:
        _check_choice("head.kind", self.kind, choices.MARGIN_KINDS)
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"head.sample_rate must lie in (0, 1] (1 = every class); got {self.sample_rate!r}")
        if self.chunk_elems < 0:
            raise ConfigError(f"head.chunk_elems must be >= 0 (0 = the device's default); got {self.chunk_elems!r}")


@dataclass
class ContrastConfig:
    enabled: bool = True
    """add the quality-guided contrastive loss (docs/method.md §4); needs two views (data.views lh or adaface)"""
    weight: float = 1.0
    """w in L = L_cls + w * L_con"""
    queue_size: int = 0
    """K, embeddings kept in the queue; 0 = max(16384, queue_steps x the keys one step enqueues over all ranks)"""
    queue_steps: int = 8
    """steps of history the automatic queue size (queue_size=0) holds at least"""
    queue: str = "proxy"
    """proxy = keys moved by their class proxy's drift (default), fifo = plain queue"""
    s: float = 64.0
    """logit scale of the contrastive loss"""
    threshold: float = 0.5
    """tau_c: pairs whose quality t is below it get factor s1, the others s2"""
    method: str = "sgn"
    """quality factor shape: sgn, linear or cos"""
    scale_range: str = "half"
    """half = high-quality pairs get no gradient, whole = they get s2"""
    select: str = "low"
    """pair quality from the two views: low (min), mean or high (max)"""
    margin_mode: str = "none"
    """margin on the positive: none, static (contrast.margin) or dynamic (EMA of positive - hardest negative)"""
    margin: float = 0.0
    """static margin on the positive cosine"""
    mask_same_class: bool = True
    """mask queue entries of the sample's identity (else only its own views)"""
    detach_pos: bool = False
    """detach the partner in the positive cosine"""
    rescale: bool = True
    """rescale the loss by log(129)/log(K+1) so it does not depend on K"""
    later_joint: bool = False
    """contrast weight is 0 before epoch joint_point"""
    joint_point: int = 0
    """epoch where joint training starts (later_joint, quality-scale warm-up, progressive queue)"""
    progressive: bool = False
    """grow the effective queue from the batch size to K between joint_point and the last epoch"""

    def __post_init__(self) -> None:
        _check_choice("contrast.queue", self.queue, choices.QUEUE_MODES)
        _check_choice("contrast.method", self.method, choices.QUALITY_METHODS)
        _check_choice("contrast.scale_range", self.scale_range, choices.SCALE_RANGES)
        _check_choice("contrast.select", self.select, choices.SELECTS)
        _check_choice("contrast.margin_mode", self.margin_mode, choices.MARGIN_MODES)
        if self.queue_size < 0:
            raise ConfigError(
                f"contrast.queue_size must be >= 0 (0 = from contrast.queue_steps); got {self.queue_size!r}"
            )
        _check_positive("contrast.queue_steps", self.queue_steps)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"contrast.threshold must lie in (0, 1), got {self.threshold!r}")


@dataclass
class OptimConfig:
    lr: float = 0.1
    """SGD learning rate"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 5e-4
    """weight decay on all non-BN parameters and the class proxies (none on BN)"""
    epochs: int = 26
    """training epochs"""
    milestones: list[int] = field(default_factory=lambda: [12, 20, 24])
    """MultiStepLR epochs where lr is multiplied by gamma"""
    gamma: float = 0.1
    """MultiStepLR factor"""
    grad_clip: float = 0.0
    """clip the global gradient norm to this value; 0 = no clipping"""

    def __post_init__(self) -> None:
        _check_positive("optim.epochs", self.epochs)


@dataclass
class TrainConfig:
    precision: str = "auto"
    """autocast dtype of the backbone on GPU: auto (bf16 from compute capability 8, else fp16 with loss scaling), bf16, fp16 or fp32 (CPU always runs fp32)"""
    max_steps: int = 0
    """stop after this many optimiser steps in total; 0 = run all epochs"""
    steps_per_epoch: int = 0
    """cap on steps per epoch (small demos and tests); 0 = the whole dataset"""
    checkpoint_every: int = 500
    """save last.pt every this many steps (and always at each epoch end)"""
    log_every: int = 20
    """write TensorBoard scalars every this many steps"""
    resume: str = "auto"
    """auto = continue from <run>/checkpoints/last.pt when it exists, none = start fresh, or a checkpoint path"""
    max_restarts: int = 3
    """torchrun restarts of failed workers (each resumes from last.pt)"""
    deterministic: bool = False
    """deterministic kernels (slower on GPU); needed for a bit-exact resume on a GPU, not on a CPU (README, "On GPUs")"""

    channels_last: bool = True
    """NHWC memory layout of the backbone and its input on GPU (faster tensor-core convolutions); CPU keeps NCHW"""
    compile: bool = False
    """torch.compile the backbone (minutes of compilation at start, faster steps after)"""
    fused_optimizer: bool = True
    """fused SGD (one kernel for every parameter) where the device supports it"""
    static_graph: bool = True
    """tell DDP the autograd graph is the same every step (lets it overlap and skip per-step checks); not with grad_accum > 1"""
    grad_compression: str = "none"
    """DDP all-reduce of gradients in: none (fp32), bf16 or fp16 (half the traffic, e.g. the 1.27 GB head at WebFace12M)"""
    grad_accum: int = 1
    """micro-batches per optimiser step: data.batch_size is split into this many (memory knob; same gradient up to BatchNorm)"""
    activation_checkpointing: bool = False
    """recompute each IR unit's activations in backward instead of keeping them (memory knob, ~30% slower)"""

    def __post_init__(self) -> None:
        _check_choice("train.precision", self.precision, choices.PRECISIONS)
        _check_choice("train.grad_compression", self.grad_compression, choices.GRAD_COMPRESSIONS)
        _check_positive("train.grad_accum", self.grad_accum)
        _check_choice_or_path("train.resume", self.resume, choices.RESUME_MODES)


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    """benchmarks evaluated after training, one array task each"""
    data_root: str = ""
    """folder holding every benchmark's data (hq .bin files, tinyface/, scface/, IJBB/, IJBC/); empty = synthetic"""
    batch_size: int = 128
    """images per embedding batch"""
    tf32: bool = False
    """let evaluation's fp32 convolutions and matmuls use TF32 on an Ampere+ GPU (faster; embeddings then differ from CPU ones by ~1e-3, not rounding)"""
    num_workers: int = 2
    """DataLoader workers that decode evaluation images"""
    rec_dir: str = ""
    """where compressed benchmarks (<name>.rec/.idx/.manifest.json) go; empty = beside the benchmark's data"""
    tinyface_aligned_dir: str = TINYFACE_ALIGNED_DIR
    """TinyFace: folder under data_root with the aligned Probe/, Gallery_Match/, Gallery_Distractor/ images"""
    scface_aligned_dir: str = SCFACE_ALIGNED_DIR
    """SCface: folder under data_root with the aligned NNN_camK_D.jpg probes and NNN_frontal.jpg mugshots"""
    ijb_protocol: str = "qgface"
    """IJB-B/C convention: qgface (the paper's: unit embeddings, lower TAR on ties) or insightface (N1D1F2)"""
    checkpoints: str = "last"
    """checkpoints evaluated after training: last (last.pt), all (every epoch_<e>.pt, and last.pt unless it is one), best (best.pt, kept by validation during training), or comma-separated file names in checkpoints/ or paths"""
    every_steps: int = 0
    """validate during training every this many steps and at the end (docs/method.md §7.9); 0 = off"""
    val_benchmarks: list[str] = field(default_factory=lambda: list(VALIDATION_BENCHMARKS))
    """benchmarks validated during training; only those cheap enough to run inside training: hq, crlfw"""
    best_metric: str = "hq_avg"
    """validation metric (higher is better) that chooses checkpoints/best.pt, e.g. hq_avg, lfw, crlfw_avg, crlfw_8"""

    def __post_init__(self) -> None:
        _check_choice("eval.ijb_protocol", self.ijb_protocol, tuple(IJB_PROTOCOLS))
        if self.checkpoints not in ("last", "all", "best"):
            names = [name.strip() for name in self.checkpoints.split(",")]
            if not all(name.endswith((".pt", ".pth", ".ckpt")) for name in names):
                raise ConfigError(
                    f"eval.checkpoints must be last, all, best or comma-separated checkpoint files "
                    f"(e.g. epoch_1.pt,last.pt); got {self.checkpoints!r}"
                )
        if self.every_steps < 0:
            raise ConfigError(
                f"eval.every_steps must be >= 0 (0 = no validation during training); got {self.every_steps!r}"
            )
        if not self.val_benchmarks or len(set(self.val_benchmarks)) != len(self.val_benchmarks):
            raise ConfigError(f"eval.val_benchmarks must list distinct benchmarks; got {self.val_benchmarks!r}")
        for name in self.val_benchmarks:
            if name not in VALIDATION_BENCHMARKS:
                raise ConfigError(
                    f"eval.val_benchmarks: {name!r} cannot be validated during training; only "
                    f"{', '.join(VALIDATION_BENCHMARKS)} are cheap enough (evaluate the others after "
                    "training with eval.benchmarks)"
                )
        if not self.best_metric:
            raise ConfigError("eval.best_metric must name a validation metric, e.g. hq_avg")


@dataclass
class ClusterConfig:
    partition: str = ""
    """Slurm partition; empty = the cluster's default"""
    nodes: int = 1
    """nodes of the training job (one Slurm task per node running torchrun)"""
    gpus_per_node: int = 0
    """GPUs per node = torchrun workers per node; 0 = CPU training with one worker per node (gloo)"""
    cpus_per_task: int = 0
    """CPUs per node task, also given to srun; 0 = ranks per node x (1 + loader workers), 4 workers when data.num_workers=-1"""
    mem: str = ""
    """memory per node, e.g. 64G; empty = Slurm's default"""
    time_min: int = 60
    """time limit of the training job in minutes"""
    eval_time_min: int = 60
    """time limit of each evaluation task in minutes"""
    account: str = ""
    """Slurm account; empty = none"""
    qos: str = ""
    """Slurm QOS; empty = none"""
    constraint: str = ""
    """Slurm node constraint; empty = none"""
    max_requeues: int = 10
    """how often a preempted or timed-out training job is requeued"""

    def __post_init__(self) -> None:
        _check_positive("cluster.nodes", self.nodes)


@dataclass
class Config:
    name: str = "qgface"
    """run name; the run directory is <output_root>/<name>-<timestamp> when launched"""
    run_dir: str = ""
    """the run's output folder; empty = <output_root>/<name>"""
    output_root: str = "logs"
    """folder that holds every run directory and the synthetic data cache"""
    seed: int = 0
    """seed of model initialisation, sampling and augmentation"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_root) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_choice_or_path(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices and not value.endswith((".pt", ".pth", ".ckpt")):
        raise ConfigError(f"{key} must be one of {', '.join(choices)} or a checkpoint path; got {value!r}")


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} is a probability and must lie in [0, 1]; got {value!r}")


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be positive; got {value!r}")


def _check_range(key: str, value: list[float], low: float, high: float) -> None:
    if len(value) != 2 or not low < value[0] <= value[1] <= high:
        raise ConfigError(f"{key} must be [min, max] with {low} < min <= max <= {high}; got {value!r}")
