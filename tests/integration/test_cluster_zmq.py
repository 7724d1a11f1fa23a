"""The zmq cluster as separate OS processes over tcp on 127.0.0.1: by hand (`ffpipe worker`
per role), through `ffpipe train --transport zmq`, through `launch/zmq_local.sh`, and a
stage killed and restarted by hand mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import (SYNTH, SYNTH_STEPS_PER_EPOCH, free_port_block, read_jsonl, trained,
                      wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
K = 3  # SYNTH has 3 layers: 3 stages + source + sink = 5 processes
CHANCE = 0.1  # 10 classes; a few epochs of SYNTH land anywhere in 0.4-0.9


def zmq_args(base: int, out: Path, epochs: int) -> list[str]:
    return [*SYNTH, "--transport", "zmq", "--net.base_port", str(base),
            f"--net.store=127.0.0.1:{base}", "--epochs", str(epochs), "--out", str(out)]


def start_worker(procs, role: str, index: int, args: list[str]) -> subprocess.Popen:
    return procs.ffpipe(["worker", "--role", role, "--index", str(index), *args])


def finish(p: subprocess.Popen, name: str, timeout: float) -> str:
    """Wait for one worker; fail with its stderr if it hangs or exits non-zero."""
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"{name} did not finish in {timeout}s; its log:\n{err[-3000:]}")
    assert p.returncode == 0, f"{name} exited {p.returncode}:\n{err[-3000:]}"
    return err


def test_five_worker_processes_started_source_first_train_over_tcp_and_all_exit_0(
        procs, tmp_path):
    out, base = tmp_path / "run", free_port_block(K + 1)
    args = zmq_args(base, out, epochs=3)
    # Scrambled: the source (a pure sender) first, the sink in the middle. zmq senders
    # queue and reconnect until their receiver binds, so start order must not matter.
    order = [("source", 0), ("stage", 2), ("sink", 0), ("stage", 0), ("stage", 1)]
    workers = {f"{r} {i}": start_worker(procs, r, i, args) for r, i in order}
    for name, p in workers.items():
        finish(p, name, timeout=150)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transport"] == "zmq" and summary["train_samples"] == 3 * 1600
    assert summary["test_accuracy"] > 3 * CHANCE, summary["test_accuracy"]
    assert summary.get("eval_chunks_missing", 0) == 0
    assert [s["stage"] for s in summary["stages"]] == [0, 1, 2]
    for k in range(K):
        starts = [r for r in read_jsonl(out / f"stage{k}.jsonl") if r["kind"] == "start"]
        assert len(starts) == 1 and not starts[0]["resumed"]
    assert json.loads((out / "config.json").read_text())["pipeline"]["transport"] == "zmq"
    wait_for(lambda: procs.alive() == [], 10, "every worker to exit")


def test_ffpipe_train_transport_zmq_runs_the_same_cluster_in_one_command(procs, tmp_path):
    out, base = tmp_path / "run", free_port_block(K + 1)
    code, stdout, err = procs.run(["train", *SYNTH, "--transport", "zmq", "--net.base_port",
                                   str(base), "--epochs", "3", "--out", str(out)], timeout=180)
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transport"] == "zmq" and summary["train_samples"] == 3 * 1600
    assert summary["test_accuracy"] > 3 * CHANCE
    assert "test accuracy" in stdout
    assert procs.alive() == []


def run_script(procs, script: str, args: list[str], env: dict | None = None):
    p = subprocess.Popen(["bash", str(ROOT / "launch" / script), *args], env=procs.env(env),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    procs.started.append(p)  # the fixture kills it (and its tagged children) on failure
    return p


def test_zmq_local_script_starts_every_worker_and_writes_the_run_folder(procs, tmp_path):
    out, base = tmp_path / "run", free_port_block(K + 1)
    p = run_script(procs, "zmq_local.sh", [*SYNTH, "--net.base_port", str(base),
                                           "--epochs", "3", "--out", str(out)])
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transport"] == "zmq" and summary["test_accuracy"] > 3 * CHANCE
    assert {"config.json", "sink.jsonl", "stage0.jsonl", "stage2.jsonl"} <= {
        f.name for f in out.iterdir()}
    assert procs.alive() == []


def test_zmq_local_script_stops_every_worker_on_sigterm_and_they_checkpoint(procs, tmp_path):
    out, base = tmp_path / "run", free_port_block(K + 1)
    p = run_script(procs, "zmq_local.sh", [*SYNTH, "--net.base_port", str(base),
                                           "--epochs", "500", "--out", str(out)])
    wait_for(lambda: trained(out, K - 1), 120, "the last stage to train")
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    assert p.returncode == 143
    wait_for(lambda: procs.alive() == [], 5, "every worker to exit")
    for name in ("source", "stage0", "stage1", "stage2"):
        assert (out / "ckpt" / f"{name}.pt").exists(), name


def test_zmq_local_script_names_a_dead_worker_and_stops_the_others(procs, tmp_path):
    out, base = tmp_path / "run", free_port_block(K + 1)
    p = run_script(procs, "zmq_local.sh", [*SYNTH, "--net.base_port", str(base),
                                           "--epochs", "500", "--out", str(out)])
    wait_for(lambda: trained(out, 1), 120, "stage 1 to train")
    pid = [r for r in read_jsonl(out / "stage1.jsonl") if r["kind"] == "start"][-1]["pid"]
    os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("zmq_local.sh: error:")]
    assert len(errors) == 1 and "stage 1 died" in errors[0], err[-3000:]
    wait_for(lambda: procs.alive() == [], 5, "every worker to exit")
    assert (out / "ckpt" / "stage0.pt").exists()  # the survivors stopped cleanly


def test_stage_killed_mid_run_and_restarted_with_resume_rejoins_and_the_run_completes(
        procs, tmp_path):
    out, base = tmp_path / "run", free_port_block(K + 1)
    # Long enough that the kill lands mid-training, far from the final evaluation;
    # frequent checkpoints so the restarted stage has one to load.
    args = zmq_args(base, out, epochs=60) + ["--pipeline.ckpt_every=5",
                                             "--train.log_every=5"]
    workers = {f"{r} {i}": start_worker(procs, r, i, args)
               for r, i in [("sink", 0), ("stage", 2), ("stage", 1), ("stage", 0),
                            ("source", 0)]}
    ckpt = out / "ckpt" / "stage1.pt"
    wait_for(lambda: ckpt.exists() and trained(out, 1), 120, "stage 1 to checkpoint")
    victim = workers.pop("stage 1")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    assert victim.returncode == -signal.SIGKILL
    source_step = torch_load_step(out / "ckpt" / "source.pt")
    assert source_step < 60 * SYNTH_STEPS_PER_EPOCH // 2, "the kill came too late to be mid-run"

    # Its peers keep running: stage 0 blocks on the missing receiver, stage 2 starves.
    assert all(p.poll() is None for p in workers.values())
    workers["stage 1 (restarted)"] = start_worker(procs, "stage", 1, args + ["--resume"])
    for name, p in workers.items():
        finish(p, name, timeout=180)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] is not None and summary["test_accuracy"] > 3 * CHANCE
    assert "eval_chunks_missing" not in summary  # the kill came long before the final eval
    # Messages in flight to and from the dead stage are lost: fewer than all, but most.
    assert 0.5 * 60 * 1600 < summary["train_samples"] <= 60 * 1600
    starts = [r for r in read_jsonl(out / "stage1.jsonl") if r["kind"] == "start"]
    assert len(starts) == 2 and not starts[0]["resumed"]
    assert starts[1]["resumed"] and starts[1]["version"] > 0 and starts[1]["pid"] != victim.pid
    wait_for(lambda: procs.alive() == [], 10, "every worker to exit")


def torch_load_step(path: Path) -> int:
    import torch
    return torch.load(path, weights_only=True)["step"] if path.exists() else 0
