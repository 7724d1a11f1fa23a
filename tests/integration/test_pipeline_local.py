"""The pipelined runtime through real processes (transport `local`)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import SYNTH, SYNTH_STEPS_PER_EPOCH, read_jsonl, wait_for, where_is
from pipeline.config import from_dict
from pipeline.datasets import load_dataset
from pipeline.evaluation import evaluate
from pipeline.ff import label_scores
from pipeline.runtime.checkpoint import load_layers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_three_stage_pipeline_learns_writes_every_log_and_leaves_no_process(procs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = procs.run(["train", *SYNTH, "--epochs", "5", "--out", str(out),
                                   "--probe-every", "10", "--eval-every", "40"], timeout=200)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schedule"] == "pipelined" and summary["train_samples"] == 5 * 1600
    assert summary["test_accuracy"] > 0.5  # chance is 0.1
    for k in range(3):
        records = read_jsonl(out / f"stage{k}.jsonl")
        kinds = {r["kind"] for r in records}
        assert {"start", "train", "drift"} <= kinds
        assert all(len(r["staleness"]) == k for r in records if r["kind"] == "train")
    stage0_drift = [r for r in read_jsonl(out / "stage0.jsonl") if r["kind"] == "drift"]
    assert stage0_drift and all(r["cos_ref"] == 1.0 and r["mmd2_ref"] == 0.0
                                for r in stage0_drift)  # its input is raw data
    evals = read_jsonl(out / "sink.jsonl")
    assert len(evals) >= 2 and evals[-1]["final"]
    assert evals[-1]["test_accuracy"] == summary["test_accuracy"]
    assert "test accuracy" in stdout
    assert procs.alive() == []


def test_streamed_evaluation_matches_single_process_evaluation_of_the_same_weights(
        procs, tmp_path):
    out = tmp_path / "run"
    # float32: a bf16 product's rounding depends on the thread count, so a process with
    # other threads may differ by a bf16 ulp (bf16's own tolerance: test_precision.py).
    code, _, err = procs.run(["train", *SYNTH, "--epochs", "2", "--train.precision", "fp32",
                              "--out", str(out)],
                             timeout=200)
    assert code == 0, err
    cfg = from_dict(json.loads((out / "config.json").read_text()))
    ds = load_dataset(cfg.data)
    layers = load_layers(out, cfg)
    streamed = torch.load(out / "eval_scores.pt", weights_only=True)
    m = cfg.model
    direct = label_scores(layers, ds.x_test, ds.num_classes, strength=m.label_strength,
                          skip=m.skip_layers, kind=m.goodness)
    torch.testing.assert_close(streamed, direct, rtol=1e-5, atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] == evaluate(layers, ds.x_test, ds.y_test, cfg,
                                                ds.num_classes)["test_accuracy"]


def stage_pid(out: Path, k: int) -> int | None:
    path = out / f"stage{k}.jsonl"
    if not path.exists():
        return None
    starts = [r for r in read_jsonl(path) if r["kind"] == "start"]
    trained = any(r["kind"] == "train" for r in read_jsonl(path))
    return starts[-1]["pid"] if starts and trained else None


def test_killing_a_stage_makes_the_launcher_name_it_and_exit_nonzero_with_no_orphans(
        procs, tmp_path):
    out = tmp_path / "run"
    p = procs.ffpipe(["train", *SYNTH, "--epochs", "500", "--out", str(out),
                      "--train.log_every=5"])
    pid = wait_for(lambda: stage_pid(out, 1), 120, "stage 1 to train")
    t0 = time.monotonic()
    import os
    os.kill(pid, signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stack = where_is(p.pid)
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"launcher still running 60 s after stage 1 was killed\n{stack}\n"
                    f"stderr tail:\n{err[-3000:]}")
    assert p.returncode not in (0, None)
    assert time.monotonic() - t0 < 30
    last = [line for line in err.splitlines() if line.startswith("ffpipe: error:")]
    assert last and "stage 1" in last[-1] and "SIGKILL" in last[-1]
    wait_for(lambda: procs.alive() == [], 10, "every child to exit")
    assert (out / "ckpt" / "stage0.pt").exists()  # survivors flushed their checkpoints


def test_ctrl_c_stops_every_child_within_10s_flushes_checkpoints_and_resume_continues(
        procs, tmp_path):
    out = tmp_path / "run"
    p = procs.ffpipe(["train", *SYNTH, "--epochs", "500", "--out", str(out),
                      "--train.log_every=5"])
    wait_for(lambda: stage_pid(out, 2), 120, "the last stage to train")
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode == 130
    assert time.monotonic() - t0 < 12
    wait_for(lambda: procs.alive() == [], 5, "every child to exit")
    versions = []
    for k in range(3):
        state = torch.load(out / "ckpt" / f"stage{k}.pt", weights_only=True)
        versions.append(state["trainer"]["version"])
        assert state["trainer"]["version"] > 0
    source = torch.load(out / "ckpt" / "source.pt", weights_only=True)
    assert source["step"] > 0
    # Resume: one more epoch than the source had reached; versions continue upward.
    code, _, err = procs.run(["train", *SYNTH, "--epochs", str(source["step"] // SYNTH_STEPS_PER_EPOCH + 1),
                              "--out", str(out), "--resume"], timeout=200)
    assert code == 0, err
    starts = [r for r in read_jsonl(out / "stage0.jsonl") if r["kind"] == "start"]
    assert starts[-1]["resumed"] and starts[-1]["version"] == versions[0]
    final = torch.load(out / "ckpt" / "stage0.pt", weights_only=True)
    assert final["trainer"]["version"] > versions[0]
