"""bench.gemm: the FLOPs the roofline bench counts are the ones a real train step runs."""

import pytest
import torch

from pipeline.bench.gemm import (GemmCensus, census, gemm_only_seconds, main_dtype,
                                 step_gemm_flops)
from pipeline.config import load_config
from pipeline.layer_trainer import LayerTrainer

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(GemmCensus is None, reason="no torch dispatch mode")]


def trainer(k: int = 1, layers: str = "12,20,16", **extra) -> LayerTrainer:
    cfg = load_config(None, [("model.layers", layers), *extra.items()])
    return LayerTrainer(k, cfg)


def test_a_train_step_runs_a_forward_and_a_weight_gradient_gemm_and_no_input_gradient():
    tr = trainer()
    B = 7
    gemms = census(lambda: tr.train_step(torch.rand(B, 20), torch.rand(B, 20), 0.0))
    assert [op for op, _, _ in gemms] == ["addmm", "mm"]  # forward, then weight gradient
    assert sum(f for _, f, _ in gemms) == step_gemm_flops(B, 20, 16)
    assert main_dtype(gemms) == tr.dtype  # what train.precision resolved to here


def test_the_census_sees_the_precision_the_step_ran_in():
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        tr = trainer(**{"train.precision": name})
        gemms = census(lambda: tr.train_step(torch.rand(5, 20), torch.rand(5, 20), 0.0))
        assert main_dtype(gemms) == dtype


def test_an_upstream_input_that_needs_gradients_would_add_a_third_gemm():
    """The census is not blind to backward GEMMs: a non-detached input adds one."""
    layer = torch.nn.Linear(20, 16)
    x = torch.rand(14, 20, requires_grad=True)
    gemms = census(lambda: layer(x).pow(2).sum().backward())
    assert len(gemms) == 3
    assert sum(f for _, f, _ in gemms) == 3 * 2 * 14 * 20 * 16


def test_the_census_reports_the_dtype_the_gemms_ran_in():
    layer = torch.nn.Linear(20, 16)
    x = torch.rand(14, 20)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x).float().pow(2).sum().backward()

    assert main_dtype(census(step)) == torch.bfloat16


def test_gemm_only_timing_runs_in_each_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        assert gemm_only_seconds(4, 8, 8, dtype, torch.device("cpu"), seconds=0.0) > 0
