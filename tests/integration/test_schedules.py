"""The single-process schedules end to end (in this process, synthetic data)."""

from __future__ import annotations

import json

import pytest

from conftest import SYNTH, read_jsonl
from pipeline.overrides import config_from_argv
from pipeline.drift.report import make_report
from pipeline import train

pytestmark = pytest.mark.timeout(180)
DRIFT_KEYS = ("cos_ref", "mmd2_ref", "mean_shift_ref", "cka_ref")


def run(tmp_path, schedule: str, *extra: str) -> tuple[dict, object]:
    out = tmp_path / schedule
    cfg = config_from_argv([*SYNTH, "--schedule", schedule, "--epochs", "2", "--out", str(out),
                            "--probe-every", "8", "--train.threads=1", *extra])
    return train(cfg), out


def drift_records(out, k: int) -> list[dict]:
    return [r for r in read_jsonl(out / f"stage{k}.jsonl") if r["kind"] == "drift"]


def is_zero_drift(r: dict) -> bool:
    return (r["cos_ref"] == 1.0 and r["cka_ref"] == 1.0 and r["mmd2_ref"] == 0.0
            and r["mean_shift_ref"] == 0.0)


@pytest.mark.parametrize("schedule", ["lockstep", "sequential", "backprop"])
def test_schedule_learns_and_writes_config_logs_summary_and_checkpoints(tmp_path, schedule):
    summary, out = run(tmp_path, schedule)
    for key in ("schedule", "dataset", "layers", "test_accuracy", "train_samples",
                "wall_seconds", "samples_per_second", "seed"):
        assert key in summary
    assert summary["schedule"] == schedule and summary["train_samples"] == 2 * 1600
    assert summary["test_accuracy"] > 0.5  # chance is 0.1
    assert json.loads((out / "summary.json").read_text()) == summary
    assert json.loads((out / "config.json").read_text())["train"]["schedule"] == schedule
    for k in range(3):
        assert (out / "ckpt" / f"stage{k}.pt").exists()
        assert any(r["kind"] == "train" for r in read_jsonl(out / f"stage{k}.jsonl"))
    assert read_jsonl(out / "sink.jsonl")[-1]["final"]


def test_stage_0_input_never_drifts_while_lockstep_deeper_inputs_do(tmp_path):
    _, out = run(tmp_path, "lockstep")
    assert drift_records(out, 0) and all(is_zero_drift(r) for r in drift_records(out, 0))
    later = drift_records(out, 2)[1:]
    assert later and all(r["cos_ref"] < 1.0 and r["mmd2_ref"] > 0.0 for r in later)


def test_sequential_stages_see_zero_drift_because_their_upstream_is_frozen(tmp_path):
    _, out = run(tmp_path, "sequential")
    for k in range(3):
        records = drift_records(out, k)
        assert len(records) >= 2 and all(is_zero_drift(r) for r in records), k


def test_drift_report_on_a_recorded_run_matches_its_jsonl(tmp_path):
    summary, out = run(tmp_path, "lockstep")
    png, md = make_report(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = md.read_text()
    final = drift_records(out, 2)[-1]
    assert f"{final['cos_ref']:.4g}" in report and f"{final['mmd2_ref']:.4g}" in report


def test_head_is_trained_and_reported_when_on(tmp_path):
    summary, _ = run(tmp_path, "lockstep", "--head")
    assert 0.5 < summary["head_accuracy"] <= 1.0


def weights(out, K: int) -> list[dict]:
    import torch
    return [torch.load(out / "ckpt" / f"stage{k}.pt", weights_only=True)["trainer"]["layer"]
            for k in range(K)]


def test_pipelined_with_lossless_hops_computes_exactly_what_lockstep_computes(tmp_path):
    # Same seed: the same initial weights and the same batches in both. A stage trains on
    # its inputs in order, and each input was made by the upstream layer before that
    # layer's own update on the same batch, exactly as in lockstep: so the weights agree
    # bit for bit, and a second pipelined run agrees with the first (no dependence on
    # timing). Only the `latest` policy and max_staleness, which drop inputs, break this.
    lock, out_l = run(tmp_path, "lockstep")
    out_p, out_q = tmp_path / "p1", tmp_path / "p2"
    pipe, _ = run(tmp_path, "pipelined", "--out", str(out_p))
    again, _ = run(tmp_path, "pipelined", "--out", str(out_q))
    K = len(lock["layers"]) - 1
    for a, b, c in zip(weights(out_l, K), weights(out_p, K), weights(out_q, K)):
        for name in a:
            assert a[name].equal(b[name]) and b[name].equal(c[name]), name
    assert lock["test_accuracy"] == pipe["test_accuracy"] == again["test_accuracy"]
