"""The typed configuration tree: its schema (:mod:`.schema`) and how files and overrides fill it (:mod:`.loading`).

``python -m qgface.config`` lists every key with its default and meaning.
"""

from __future__ import annotations

from qgface.config.loading import (
    config_keys,
    config_with_overrides,
    describe_keys,
    from_dict,
    load_config,
    save_config,
)
from qgface.config.schema import (
    ClusterConfig,
    Config,
    ConfigError,
    ContrastConfig,
    DataConfig,
    EvalConfig,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

__all__ = [
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ContrastConfig",
    "DataConfig",
    "EvalConfig",
    "HeadConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_keys",
    "config_with_overrides",
    "describe_keys",
    "from_dict",
    "load_config",
    "save_config",
]
