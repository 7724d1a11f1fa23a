"""`ffpipe bench pipeline` end to end on a tiny network: every measurement is made, the
ratios are the ones printed, and nothing lands in the user's run folders."""

from __future__ import annotations

import io

import pytest

from pipeline.bench.pipeline_bench import run_pipeline_bench
from pipeline.overrides import config_from_argv
from pipeline.datasets import load_dataset

pytestmark = pytest.mark.timeout(240)


def test_pipeline_bench_measures_alone_together_lockstep_and_pipelined(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/<time>, relative to here
    cfg = config_from_argv(["--dataset", "synthetic", "--layers", "64,32,32",
                            "--threads-per-stage", "1", "--batch-size", "25"])
    out = io.StringIO()
    r = run_pipeline_bench(cfg, load_dataset(cfg.data), steps=40, reps=2, stream=out)
    for name in ("lockstep", "pipelined", "stage0", "stage1", "stage0_together",
                 "stage1_together"):
        assert r[f"{name}_samples_per_s"] > 0, name
    reps = [dict(kv.rsplit(" ", 1) for kv in line.split(": ", 1)[1].split(", "))
            for line in out.getvalue().splitlines() if line.startswith("  rep ")]
    assert len(reps) == 2  # the second ran its measurements in reverse order
    for rep in reps:  # each rep's ratio is its own numbers' ratio
        slowest = min(float(rep["stage0"]), float(rep["stage1"]))
        assert float(rep["efficiency"]) == pytest.approx(float(rep["pipelined"]) / slowest,
                                                         rel=1e-2)
    assert r["efficiency"] == pytest.approx(
        sum(float(rep["efficiency"]) for rep in reps) / 2, abs=1e-3)  # median of two
    assert f"{r['efficiency']:.3f}" in out.getvalue()
    assert not (tmp_path / "runs").exists()
