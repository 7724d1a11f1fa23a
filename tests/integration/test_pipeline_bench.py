"""`ffpipe bench pipeline` end to end on a tiny network: every measurement is made, the
ratios are the ones printed, and nothing lands in the user's run folders."""

from __future__ import annotations

import io

import pytest

from pipeline.bench.pipeline_bench import run_pipeline_bench
from pipeline.cli import config_from_argv
from pipeline.datasets import load_dataset

pytestmark = pytest.mark.timeout(240)


def test_pipeline_bench_measures_alone_together_lockstep_and_pipelined(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/default, relative to here
    cfg = config_from_argv(["--dataset", "synthetic", "--layers", "64,32,32",
                            "--threads-per-stage", "1", "--batch-size", "25"])
    out = io.StringIO()
    r = run_pipeline_bench(cfg, load_dataset(cfg.data), steps=40, reps=1, stream=out)
    for name in ("lockstep", "pipelined", "stage0", "stage1", "stage0_together",
                 "stage1_together"):
        assert r[f"{name}_samples_per_s"] > 0, name
    slowest = min(r["stage0_samples_per_s"], r["stage1_samples_per_s"])
    assert r["efficiency"] == pytest.approx(r["pipelined_samples_per_s"] / slowest)
    assert f"{r['efficiency']:.3f}" in out.getvalue()
    assert not (tmp_path / "runs").exists()
