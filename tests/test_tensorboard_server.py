"""The README's monitoring step for real: the venv's ``tensorboard`` command serves a finished run.

A tiny run is trained (2 epochs x 3 steps), then ``tensorboard --logdir`` is started on a loopback
port and its HTTP API is read: the run, the scalar tags, and the image tags, whose steps must include
the last step (the final model's pairs and heatmap, not only each epoch's first step).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from qgface.config import load_config
from qgface.data.synthetic import generate_training_set
from qgface.train.engine import Trainer

STARTUP_S = 90.0
"""bound on the server start and the first load of the event files (2 shared CPU cores)"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tb")
    root = base / "set"
    generate_training_set(root, identities=8, images_per_identity=4, workers=1)
    run = base / "logs" / "run"
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            f"run_dir={run}",
            "model.backbone=ir_tiny",
            "data.batch_size=8",
            "contrast.queue_size=64",
            "data.num_workers=0",
            "train.log_every=1",
            "optim.epochs=2",
            "train.steps_per_epoch=3",
            "optim.milestones=[1]",
        ],
    )
    trainer = Trainer(cfg)
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    return run


def _tensorboard() -> str:
    exe = Path(sys.executable).with_name("tensorboard")  # the venv's console script, as the README runs it
    return str(exe) if exe.is_file() else shutil.which("tensorboard") or "tensorboard"


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_scalars_and_final_images_of_a_finished_run(finished_run):
    logdir = finished_run.parent
    server = subprocess.Popen(
        [
            _tensorboard(),
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        url, seen = None, []
        while url is None:
            line = server.stdout.readline()
            assert line or server.poll() is None, "tensorboard exited:\n" + "".join(seen)
            seen.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = match.group(1) if match else None
            assert time.monotonic() < deadline, "tensorboard did not start:\n" + "".join(seen)
        run_name = f"{finished_run.name}/tb"
        while True:
            scalars = _get(f"{url}/data/plugin/scalars/tags")
            images = _get(f"{url}/data/plugin/images/tags")
            if run_name in scalars and run_name in images:
                break
            assert time.monotonic() < deadline, f"tensorboard never loaded {run_name}: {scalars}"
            time.sleep(1)
        assert run_name in _get(f"{url}/data/runs")
        assert {"train/loss", "train/loss_cls", "train/lr", "train/images_per_s"} <= set(scalars[run_name])
        assert {"train/pairs_L_H", "train/norm_vs_similarity"} <= set(images[run_name])
        query = urllib.parse.urlencode({"run": run_name, "tag": "train/pairs_L_H"})
        steps = [e["step"] for e in _get(f"{url}/data/plugin/images/images?{query}")]
        assert steps == [1, 4, 6]  # each epoch's first step, and the last step: the final model
        query = urllib.parse.urlencode({"run": run_name, "tag": "train/loss"})
        assert [e[1] for e in _get(f"{url}/data/plugin/scalars/scalars?{query}")] == [1, 2, 3, 4, 5, 6]
    finally:
        server.terminate()
        server.wait(timeout=30)
