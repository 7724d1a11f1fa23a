"""The CUDA code paths: every schedule with its layers (and the head) on a GPU.

Skipped where torch sees no GPU (CI); run on a GPU machine with `pytest tests/integration/test_cuda.py`.
"""

from __future__ import annotations

import pytest
import torch

from conftest import SYNTH
from pipeline.overrides import config_from_argv
from pipeline import train

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("schedule", ["lockstep", "sequential", "backprop", "pipelined"])
def test_schedule_trains_on_cuda_with_the_head_on(tmp_path, schedule):
    device = ["--devices", "cuda:0,cuda:0,cuda:0"] if schedule == "pipelined" else [
        "--train.device", "cuda"]
    cfg = config_from_argv([*SYNTH, "--schedule", schedule, "--epochs", "2", "--head",
                            "--out", str(tmp_path / schedule), "--probe-every", "8", *device])
    summary = train(cfg)
    assert summary["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    if schedule != "backprop":
        assert summary["head_accuracy"] > 0.5
