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


def test_stage_to_stage_hops_on_cuda_carry_no_tensor_bytes_through_the_host(tmp_path):
    cfg = config_from_argv([*SYNTH, "--epochs", "1", "--out", str(tmp_path / "ring"),
                            "--devices", "cuda:0,cuda:0,cuda:0"])
    summary = train(cfg)
    assert summary["test_accuracy"] > 0.3
    stages = {s["stage"]: s for s in summary["stages"]}
    # stage 0 -> 1 and 1 -> 2 are device rings; the last stage sends to the sink (host)
    assert stages[0]["device_bytes_sent"] > 0 and stages[1]["device_bytes_sent"] > 0
    assert stages[2]["device_bytes_sent"] == 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_trains_on_cuda_with_float32_master_weights(tmp_path, precision):
    cfg = config_from_argv([*SYNTH, "--schedule", "lockstep", "--epochs", "2",
                            "--train.device", "cuda", "--train.precision", precision,
                            "--out", str(tmp_path / precision)])
    summary = train(cfg)
    assert summary["test_accuracy"] > 0.5 and summary["precision"] == precision


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_matches_the_eager_step(precision):
    from pipeline.config import load_config
    from pipeline.layer_trainer import LayerTrainer

    def trainer(mode):
        cfg = load_config(None, [("model.layers", "64,128,32"), ("train.batch_size", "16"),
                                 ("train.precision", precision), ("train.peer_lambda", "0.03"),
                                 ("train.step_graph", mode)])
        return LayerTrainer(0, cfg, "cuda")

    eager, graphed = trainer("off"), trainer("auto")
    assert graphed.use_graph and not eager.use_graph
    g = torch.Generator().manual_seed(0)
    for i in range(12):  # warm-up steps, the capture, then replays
        pos, neg = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
        a = eager.train_step(pos.cuda(), neg.cuda(), i / 12)[0]
        b = graphed.train_step(pos.cuda(), neg.cuda(), i / 12)[0]
        torch.testing.assert_close(b.float(), a.float(), atol=2e-2, rtol=2e-2)
    assert graphed.graph is not None and graphed.graph.graph is not None  # captured
    assert graphed.version == eager.version == 12
