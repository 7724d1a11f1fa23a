"""`ffpipe bench roofline|scaling|startup` end to end on tiny networks: every measurement is
made, the columns are printed, the ratios are those of the printed numbers, and nothing
lands in the user's run folders. No timing is asserted."""

from __future__ import annotations

import io

import pytest

from pipeline.bench.gemm import step_gemm_flops
from pipeline.bench.roofline import run_roofline_bench
from pipeline.bench.scaling import COLUMNS, run_scaling_bench
from pipeline.bench.startup_bench import PHASES, run_startup_bench
from pipeline.overrides import config_from_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TINY = ["--dataset", "synthetic", "--layers", "64,32,24", "--batch-size", "25",
        "--threads-per-stage", "1", "--model.label_strength=4", "--train.precision", "fp32"]
N_TRAIN = 1600  # synthetic's train split


def table(text: str, header_start: str) -> list[list[str]]:
    """The rows under the line that starts with `header_start` (indented), split."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(header_start))
    rows = []
    for line in lines[at + 1:]:
        if not line.startswith("  "):
            break
        rows.append(line.split())
    return rows


def test_roofline_prints_gemm_only_rates_and_each_step_against_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_argv(TINY)
    out = io.StringIO()
    rows = run_roofline_bench(cfg, N_TRAIN, steps=20, reps=1, seconds=0.05,
                              asked=["fp32"], stream=out)
    text = out.getvalue()
    assert "no input-gradient GEMM" in text
    assert "the same count for every layer and precision" in text  # the census agrees
    gemm_rows = table(text, "layers")
    assert [r[:2] for r in gemm_rows] == [["layer", "0"], ["layer", "1"], ["all", "2"]]
    assert all(float(v) > 0 for r in gemm_rows for v in r[-2:])  # fp32 and bf16 columns
    printed = table(text, "what")
    whats = [" ".join(r[:-9]) for r in printed]
    assert whats == ["layer 0", "layer 1", "lockstep", "pipelined", "stage 0", "stage 1"]
    for r in printed:
        samples, gflops, gemm_only, ratio = (float(v) for v in r[-6:-2])
        assert ratio == pytest.approx(gflops / gemm_only, rel=0.02, abs=2e-3)
        assert r[-8] == "fp32"  # the GEMMs ran in float32
    flops = {"layer 0": step_gemm_flops(25, 64, 32), "layer 1": step_gemm_flops(25, 32, 24)}
    for row in rows:  # GFLOP/s = samples/s x the counted FLOPs per sample
        per_step = flops.get(row["what"], sum(flops.values()))
        if row["what"] in flops or row["what"] in ("lockstep", "pipelined"):
            assert row["gflops"] == pytest.approx(
                row["samples_per_s"] * per_step / 25 / 1e9, rel=1e-6)
    pipelined = next(r for r in rows if r["what"] == "pipelined")
    # causal order: children launched, every stage stepped, then the sink got a batch
    firsts = [pipelined[f"first_stage{k}_first_step_s"] for k in range(2)]
    assert 0 < pipelined["first_launch_s"] < firsts[0] <= firsts[1] <= \
        pipelined["first_sink_first_train_s"]
    stages = [r for r in rows if r["what"].strip().startswith("stage")]
    assert all(r["peak_rss_mb"] > 0 and 0 < r["busy_fraction"] <= 1 for r in stages)
    assert "first batch, pipelined fp32" in text
    assert not (tmp_path / "runs").exists()


def test_scaling_prints_one_row_per_network_with_ratios_of_its_numbers(tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_argv(TINY)
    out = io.StringIO()
    rows = run_scaling_bench(cfg, 64, N_TRAIN, stages=[1, 2], widths=[32], batches=[25],
                             steps=20, reps=1, seconds=0.05, stream=out)
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if line.startswith("| stages"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert len([line for line in lines if line.startswith("| ") and line != header]) == 2
    for r, stages in zip(rows, (1, 2)):
        assert (r["stages"], r["width"], r["batch"]) == (stages, 32, 25)
        assert r["pipelined / lockstep"] == pytest.approx(
            r["pipelined samples/s"] / r["lockstep samples/s"])
        flops = sum(step_gemm_flops(25, d_in, 32) for d_in in [64, 32][:stages]) / 25
        assert r["pipelined GFLOP/s"] == pytest.approx(r["pipelined samples/s"] * flops / 1e9)
        assert len(r["peak RSS MiB per stage"].split(" / ")) == stages
    assert not (tmp_path / "runs").exists()


def test_startup_shows_every_process_in_order_and_none_imports_dynamo(tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    got = run_startup_bench(config_from_argv(TINY), reps=1, stream=out)
    text = out.getvalue()
    assert all(p in text for p in PHASES)
    procs = got["processes"]
    assert set(procs) == {"source", "stage 0", "stage 1", "sink"}
    for name, p in procs.items():
        assert p["started"] < p["first train"], name
        assert p["imports"] >= 0 and p["set-up"] >= 0
        assert p["dynamo"] == 0, f"{name} imported torch._dynamo"
    assert got["totals"]["launch"] < got["totals"]["first train message at the sink"]
    assert got["imports"] and got["imports"][0][1] > 0  # the import profile ran
    assert not (tmp_path / "runs").exists()
