"""IR backbones (docs/method.md §1) and checkpoint loading (qgface.models.io)."""

from __future__ import annotations

import logging

import pytest
import torch

from qgface.models import BACKBONES, CheckpointError, build_backbone, infer_backbone_name, load_backbone


class NotATensor:
    """A custom class: a checkpoint holding one needs arbitrary unpickling."""

    def __init__(self) -> None:
        self.value = 3


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build_backbone(name)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone("ir_tiny")
    with torch.no_grad():  # non-trivial BN statistics so a wrong load would show
        for mod in model.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_forward_returns_unit_embeddings_and_their_norms(tiny):
    x = torch.randn(3, 3, 112, 112)
    e, n = tiny(x)
    assert e.shape == (3, 512) and n.shape == (3, 1)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    # n is the norm of the pre-normalisation feature: e * n reproduces that feature
    f = tiny.output_layer(tiny.body(tiny.input_layer(x)))
    torch.testing.assert_close(e * n, f)


def test_names_and_unknown_name():
    assert BACKBONES == ("ir18", "ir34", "ir50", "ir101", "ir_se_50", "ir_se_101", "ir_tiny")
    with pytest.raises(ValueError, match="ir_se_101"):
        build_backbone("resnet50")


@pytest.mark.parametrize(
    "name,units",
    [("ir18", 8), ("ir34", 16), ("ir50", 24), ("ir101", 49), ("ir_se_50", 24), ("ir_se_101", 49), ("ir_tiny", 4)],
)
def test_adaface_layout_keys_and_shapes(name, units):
    sd = _meta(name).state_dict()
    assert {int(k.split(".")[1]) for k in sd if k.startswith("body.")} == set(range(units))
    width = 128 if name == "ir_tiny" else 512
    stem = 16 if name == "ir_tiny" else 64
    assert sd["input_layer.0.weight"].shape == (stem, 3, 3, 3)
    assert sd["input_layer.2.weight"].shape == (stem,)  # PReLU
    assert sd["output_layer.3.weight"].shape == (512, width * 7 * 7)
    assert sd["output_layer.4.running_var"].shape == (512,)
    assert "output_layer.4.weight" not in sd  # BatchNorm1d(affine=False)
    # a unit keeping its width (body.0: stem -> stem, stride 2) has a parameter-free MaxPool shortcut;
    # the first unit of stage 2 doubles the width: 1x1 conv + BN shortcut
    first2 = {"ir18": 2, "ir_tiny": 1}.get(name, 3)
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)
    assert sd[f"body.{first2}.shortcut_layer.0.weight"].shape == (2 * stem, stem, 1, 1)
    assert sd["body.0.res_layer.1.weight"].shape == (stem, stem, 3, 3)
    assert sd[f"body.{units - 1}.res_layer.4.weight"].shape == (width, width, 3, 3)
    has_se = any(".se_block." in k for k in sd)
    assert has_se == name.startswith("ir_se")
    if has_se:
        assert sd["body.0.res_layer.se_block.fc1.weight"].shape == (4, 64, 1, 1)
    assert infer_backbone_name(sd) == name


def test_ir50_parameter_count_matches_published():
    # AdaFace / InsightFace report 43.6M parameters for IR-50 with the 512*7*7 linear output layer
    n = sum(p.numel() for p in _meta("ir50").parameters())
    assert abs(n - 43.6e6) < 0.05e6


def test_init_follows_adaface():
    torch.manual_seed(0)
    m = build_backbone("ir_tiny")
    bn = m.body[0].res_layer[0]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    conv = m.body[3].res_layer[4].weight  # kaiming normal fan_out: std = sqrt(2 / (out * 3 * 3))
    assert abs(conv.std().item() - (2 / (128 * 9)) ** 0.5) < 0.003
    assert torch.equal(m.output_layer[3].bias, torch.zeros(512))


def test_project_checkpoint_loads_and_reproduces(tiny, tmp_path):
    path = tmp_path / "last.pt"
    torch.save(
        {"model": tiny.state_dict(), "backbone": "ir_tiny", "head": {"kernel": torch.zeros(3, 3)}, "epoch": 4}, path
    )
    loaded = load_backbone(path)
    assert not loaded.training and loaded.name == "ir_tiny"
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(x), tiny(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="ir18"):
        load_backbone(path, name="ir18")


def test_bare_state_dict_needs_a_name(tiny, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(CheckpointError, match="bare.pt.*name="):
        load_backbone(path)
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(load_backbone(path, "ir_tiny")(x), tiny(x), rtol=0, atol=0)


def test_lightning_checkpoint_strips_prefix_ignores_head_and_infers_name(tiny, tmp_path, caplog):
    path = tmp_path / "adaface_like.ckpt"
    sd = {f"model.{k}": v for k, v in tiny.state_dict().items()}
    sd["head.kernel"] = torch.randn(512, 10)
    sd["head.batch_mean"] = torch.ones(1)
    torch.save({"epoch": 25, "global_step": 1000, "state_dict": sd}, path)
    with caplog.at_level(logging.INFO, logger="qgface.models.io"):
        loaded = load_backbone(path)
    assert "ir_tiny" in caplog.text and "inferred" in caplog.text
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(x), tiny(x), rtol=0, atol=0)


def test_mismatch_is_refused_listing_keys(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    del sd["body.1.res_layer.1.weight"]
    sd["body.0.res_layer.1.weight"] = torch.zeros(16, 16, 5, 5)
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pt"
    torch.save({"model": sd, "backbone": "ir_tiny"}, path)
    with pytest.raises(CheckpointError) as err:
        load_backbone(path)
    msg = str(err.value)
    assert "broken.pt" in msg
    assert "1 missing: body.1.res_layer.1.weight (32, 16, 3, 3)" in msg
    assert "1 unexpected: extra.weight (2,)" in msg
    assert "body.0.res_layer.1.weight file (16, 16, 5, 5) vs model (16, 16, 3, 3)" in msg
    # a different architecture is refused the same way, listing at most five keys per kind
    other = tmp_path / "as_other.pt"
    torch.save(tiny.state_dict(), other)
    with pytest.raises(CheckpointError, match=r"missing: .*unexpected") as err:
        load_backbone(other, "ir18")
    missing_part = str(err.value).split("missing: ")[1].split(";")[0]
    assert missing_part.count("body.") + missing_part.count("input_layer") + missing_part.count("output_layer") <= 5


def test_custom_class_pickle_is_refused(tiny, tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": tiny.state_dict(), "backbone": "ir_tiny", "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="unsafe.pt.*arbitrary unpickling"):
        load_backbone(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_backbone(tmp_path / "nope.pt", "ir_tiny")


def test_read_checkpoint_tells_each_layout_and_its_metadata_from_one_read(tiny, tmp_path):
    from qgface.models.io import read_checkpoint

    sd = tiny.state_dict()
    torch.save({"model": sd, "backbone": "ir_tiny", "step": 12, "epoch": 3, "config": {"seed": 5}}, tmp_path / "a.pt")
    torch.save(
        {"global_step": 1000, "epoch": 25, "state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "b.ckpt"
    )
    torch.save(sd, tmp_path / "c.pt")
    torch.save({"weights": sd}, tmp_path / "d.pt")
    a, b, c = (read_checkpoint(tmp_path / n) for n in ("a.pt", "b.ckpt", "c.pt"))
    assert (a.layout, a.backbone, a.step, a.epoch, a.config) == ("qgface", "ir_tiny", 12, 3, {"seed": 5})
    assert (b.layout, b.backbone, b.step, b.epoch, b.config) == ("lightning", "ir_tiny", 1000, 25, None)
    assert (c.layout, c.backbone, c.step) == ("state_dict", None, None)
    assert all(a.state_dict.keys() == sd.keys() == other.state_dict.keys() for other in (b, c))
    with pytest.raises(CheckpointError, match="d.pt.*unknown layout.*weights"):
        read_checkpoint(tmp_path / "d.pt")
    x = torch.randn(2, 3, 112, 112)  # the contents already read build the same backbone as the path
    torch.testing.assert_close(load_backbone(tmp_path / "c.pt", "ir_tiny", contents=c)(x), tiny(x), rtol=0, atol=0)
