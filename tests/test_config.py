"""The config tree: YAML inheritance, dotted overrides, and the errors a user sees for a bad key or value."""

from pathlib import Path

import pytest
import yaml

from qgface.config import Config, ConfigError, describe_keys, from_dict, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_follow_method_md():
    cfg = load_config()
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.milestones == [12, 20, 24] and cfg.optim.epochs == 26
    assert (cfg.head.m, cfg.head.h, cfg.head.s, cfg.head.t_alpha) == (0.4, 0.333, 64.0, 0.01)
    assert cfg.contrast.queue_size == 0 and cfg.contrast.queue_steps == 8 and cfg.contrast.threshold == 0.5
    assert (cfg.data.crop_p, cfg.data.photometric_p, cfg.data.rotation_p) == (0.2, 0.2, 0.0)


@pytest.mark.parametrize(
    "name, views, qs_on, cl_on",
    [
        ("baseline", "flip", False, False),
        ("ablation_a", "adaface", False, False),
        ("ablation_b", "adaface", True, False),
        ("ablation_c", "adaface", True, True),
        ("qgface", "lh", True, True),
    ],
)
def test_ablation_settings_match_the_paper_table(name, views, qs_on, cl_on):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.data.views == views
    assert (cfg.head.quality_scale > 0) == qs_on
    assert cfg.contrast.enabled == cl_on


def test_base_chain_and_overrides_apply_in_order(tmp_path):
    (tmp_path / "parent.yaml").write_text("optim: {lr: 0.05, epochs: 3}\ndata: {views: flip}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim: {epochs: 4}\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.epochs=5", "eval.benchmarks=[hq, scface]", "optim.lr=1"])
    assert cfg.optim.epochs == 5
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.views == "flip"
    assert cfg.eval.benchmarks == ["hq", "scface"]
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        load_config(None, ["optim.lrr=0.1"])
    (tmp_path / "bad.yaml").write_text("contrast:\n  queue_sise: 10\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: unknown key 'contrast\.queue_sise'; did you mean 'contrast\.queue_size'"
    ):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=fast", r"optim\.lr expects float, got 'fast'"),
        ("data.batch_size=1.5", r"data\.batch_size expects int, got 1\.5"),
        ("contrast.enabled=3", r"contrast\.enabled expects bool, got 3"),
        ("optim.milestones=7", r"optim\.milestones expects a list of int, got 7"),
        ("data.views=mixed", r"data\.views must be one of lh, adaface, flip; got 'mixed'"),
        ("data.crop_p=1.5", r"data\.crop_p is a probability"),
        ("optim", r"not of the form key=value"),
    ],
)
def test_wrong_values_name_key_expected_type_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_base_cycle_and_missing_file_are_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 7


def test_every_key_has_a_meaning():
    rows = describe_keys()
    assert len(rows) > 50
    assert [key for key, _, meaning in rows if not meaning] == []
    assert isinstance(Config(), Config)


def test_a_saved_config_takes_overrides_as_its_yaml_file_would(tmp_path):
    from qgface.config import config_with_overrides

    saved = load_config(overrides=["seed=3", "contrast.queue=fifo", "eval.benchmarks=[hq]"]).to_dict()
    save_config(from_dict(saved), tmp_path / "config.yaml")
    overrides = ["eval.batch_size=9", "contrast.weight=0.5"]
    assert config_with_overrides(saved, overrides) == load_config(tmp_path / "config.yaml", overrides)
    assert saved["eval"]["batch_size"] == 128  # the caller's dict is not changed
    with pytest.raises(ConfigError, match="ckpt: unknown key 'sed'"):
        config_with_overrides({"sed": 1}, source="ckpt")


def test_the_example_cluster_profile_is_the_paper_config_plus_cluster_keys():
    repo = Path(__file__).resolve().parents[1]
    profile = load_config(repo / "configs" / "cluster" / "example.yaml")
    paper = load_config(repo / "configs" / "qgface.yaml")
    assert (profile.cluster.partition, profile.cluster.nodes, profile.cluster.gpus_per_node) == ("gpu", 2, 8)
    assert (profile.cluster.time_min, profile.cluster.max_requeues, profile.cluster.cpus_per_task) == (1440, 10, 64)
    assert profile.cluster.mem == "480G"
    profile.cluster = paper.cluster
    assert profile == paper  # nothing but cluster.* differs
