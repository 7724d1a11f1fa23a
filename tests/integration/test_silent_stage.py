"""A stage that stops without dying where a launcher can see it is reported, not waited
on forever (`pipeline.silence_timeout`):

- a compose-like cluster of lone `ffpipe worker` processes (no supervisor), one stage
  SIGKILLed as `docker kill` would: the sink fails the run in one line naming that stage,
  every other process stops by itself (those above it once the sink has ended the run),
  and none is left;
- `ffpipe train` with a stage frozen by SIGSTOP (alive to its supervisor): the run ends
  with the line naming it, and no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import SYNTH, free_port_block, read_jsonl, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

T = 8  # seconds: no healthy stage on a loaded machine goes this long without a message
STOP = ["--pipeline.silence_timeout", str(T), "--epochs", "200", "--eval-every", "0",
        "--pipeline.ckpt_every", "20", "--drift.probe_every", "0"]


def pid_of_stage(out, k: int) -> int | None:
    path = out / f"stage{k}.jsonl"
    if not path.exists():
        return None
    records = read_jsonl(path)
    if not any(r["kind"] == "train" for r in records):
        return None
    return next(r["pid"] for r in records if r["kind"] == "start")


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1] if err.strip() else ""


def test_a_killed_stage_of_lone_workers_is_named_by_the_sink_and_every_process_stops(
        procs, tmp_path):
    out = tmp_path / "run"
    opts = [*SYNTH, *STOP, "--transport", "zmq", "--out", str(out),
            "--net.base_port", str(free_port_block(5))]
    workers = {"sink": procs.ffpipe(["worker", "--role", "sink", *opts])}
    for k in (2, 1, 0):
        workers[f"stage {k}"] = procs.ffpipe(["worker", "--role", "stage", "--index", str(k),
                                             *opts])
    workers["source"] = procs.ffpipe(["worker", "--role", "source", *opts])
    victim = wait_for(lambda: pid_of_stage(out, 1), 180, "stage 1 to train")
    os.kill(victim, signal.SIGKILL)  # what `docker kill` does: nobody restarts it
    ends = {}
    for name, p in workers.items():
        if name == "stage 1":
            continue
        try:
            _, err = p.communicate(timeout=2 * T + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} is still waiting {2 * T + 60} s after stage 1 was killed")
        ends[name] = (p.returncode, err)
    code, err = ends["sink"]
    assert code == 1, err[-3000:]
    line = last_line(err)
    assert line.startswith("ffpipe: error: sink: stage 1 has gone silent"), err[-3000:]
    assert f"{T} s (pipeline.silence_timeout)" in line and "Traceback" not in err
    # Below the silent stage, stage 2 names it too; above it, the blocked senders stop
    # once the sink has ended the run. Each stops cleanly: exit 0, checkpoint written.
    assert ends["stage 2"][0] == 0 and "stage 2: stage 1 has gone silent" in ends["stage 2"][1]
    for name in ("stage 0", "source"):
        assert ends[name][0] == 0 and f"{name}: the sink has ended the run" in ends[name][1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True  # a later `--resume` can continue it
    wait_for(lambda: procs.alive() == [], 10, "every process to exit")


def test_train_with_a_frozen_stage_ends_naming_it_and_leaves_no_process(procs, tmp_path):
    out = tmp_path / "run"
    p = procs.ffpipe(["train", *SYNTH, *STOP, "--out", str(out),
                      "--pipeline.stop_timeout", "2"])
    victim = wait_for(lambda: pid_of_stage(out, 1), 180, "stage 1 to train")
    os.kill(victim, signal.SIGSTOP)  # alive to the supervisor, silent to its neighbours
    try:
        _, err = p.communicate(timeout=2 * T + 60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run still waits {2 * T + 60} s after stage 1 was frozen")
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert p.returncode == 1, err[-3000:]
    line = last_line(err)
    assert line.startswith("ffpipe: error: sink died") and "stage 1 has gone silent" in line, (
        err[-3000:])
    wait_for(lambda: procs.alive() == [], 15, "every process to exit")
