"""The vocabularies' owners: every registered benchmark resolves to its protocol class, the names the
CLIs offer are the registry's, and the components accept exactly the config's choices."""

import subprocess
import sys

import pytest

from qgface.config import ConfigError, EvalConfig, load_config
from qgface.eval.benchmarks import Benchmark, BenchmarkError, benchmark_class
from qgface.eval.benchmarks.hq import CrossResolutionLFW, HQVerification
from qgface.eval.benchmarks.ijb import IJB
from qgface.eval.benchmarks.ijb_1n import IJB1N
from qgface.eval.benchmarks.ijbs import IJBS
from qgface.eval.benchmarks.scface import SCface
from qgface.eval.benchmarks.tinyface import TinyFace
from qgface.vocab import choices
from qgface.vocab.benchmarks import BENCHMARK_NAMES, DEFAULT_BENCHMARKS
from qgface.vocab.columns import ALL_AVG_PARTS, HEADLINE


def test_registry_names_each_benchmark_class():
    expected = {
        "hq": HQVerification,
        "crlfw": CrossResolutionLFW,
        "tinyface": TinyFace,
        "scface": SCface,
        "ijbb": IJB,
        "ijbc": IJB,
        "ijbb_1n": IJB1N,
        "ijbc_1n": IJB1N,
        "ijbs": IJBS,
    }
    assert {name: benchmark_class(name) for name in BENCHMARK_NAMES} == expected
    assert all(issubclass(cls, Benchmark) for cls in expected.values())
    with pytest.raises(BenchmarkError, match="unknown benchmark 'lfw'.*hq, crlfw"):
        benchmark_class("lfw")


def test_defaults_and_columns_are_the_papers():
    assert EvalConfig().benchmarks == ["hq", "crlfw", "tinyface", "scface", "ijbb", "ijbc"] == list(DEFAULT_BENCHMARKS)
    assert ALL_AVG_PARTS == ("scface_d1", "scface_d2", "scface_d3", "tinyface_rank1", "ijbb_tar_at_1e-4", "hq_avg")
    assert HEADLINE == (
        "scface_d1",
        "scface_d2",
        "scface_d3",
        "tinyface_rank1",
        "ijbb_tar_at_1e-4",
        "ijbc_tar_at_1e-4",
        "hq_avg",
        "all_avg",
    )


def test_vocabularies_import_no_torch():
    code = (
        "import sys, qgface.vocab.benchmarks, qgface.vocab.choices, qgface.vocab.columns, qgface.vocab.synthetic, "
        "qgface.config; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_launch_help_lists_every_registered_benchmark():
    out = subprocess.run([sys.executable, "launch.py", "--help"], capture_output=True, text=True, check=True).stdout
    assert " ".join(BENCHMARK_NAMES) in " ".join(out.split())


@pytest.mark.parametrize(
    ("key", "values", "component"),
    [
        ("contrast.queue", choices.QUEUE_MODES, "qgface.losses.queue"),
        ("contrast.method", choices.QUALITY_METHODS, "qgface.losses.contrast"),
        ("head.kind", choices.MARGIN_KINDS, "qgface.losses.margin"),
        ("data.views", choices.VIEW_KINDS, "qgface.data.views"),
    ],
)
def test_config_accepts_exactly_the_choices_the_component_reads(key, values, component):
    module = __import__(component, fromlist=["_"])
    assert any(getattr(module, name, None) is values for name in dir(module))  # the component reads this tuple
    for value in values:
        load_config(overrides=[f"{key}={value}"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[f"{key}=bogus"])
