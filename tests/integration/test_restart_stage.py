"""A failed stage restarts alone (`--pipeline.restarts N`, local and zmq launchers): a
stage killed with SIGKILL mid-run is replaced from its last checkpoint, attached to the
same hops, while the source, the sink and the other stages keep running (same PIDs)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import SYNTH, free_port_block, read_jsonl, trained, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def starts(out, k: int) -> list[dict]:
    path = out / f"stage{k}.jsonl"
    return [r for r in read_jsonl(path) if r["kind"] == "start"] if path.exists() else []


@pytest.mark.parametrize("transport", ["local", "zmq"])
def test_a_stage_killed_mid_run_is_restarted_alone_and_the_run_completes(
        procs, tmp_path, transport):
    out = tmp_path / "run"
    p = procs.ffpipe(["train", *SYNTH, "--epochs", "6", "--out", str(out),
                      "--train.log_every=5", "--pipeline.ckpt_every=10",
                      "--pipeline.restarts=1", "--eval-every", "0", "--transport", transport,
                      "--net.base_port", str(free_port_block(5))])
    # Killed after its first checkpoint, so the replacement has one to resume from.
    wait_for(lambda: trained(out, 1) and (out / "ckpt" / "stage1.pt").exists()
             and len(starts(out, 2)) == 1, 90, "stage 1 to train and checkpoint")
    before = set(procs.alive())
    victim = starts(out, 1)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    _, err = p.communicate(timeout=100)
    assert p.returncode == 0, err[-3000:]
    assert "restarted it alone" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"] == {"stage 1": 1}
    pids = summary["pids"]
    for name in ("source", "sink", "stage 0", "stage 2"):
        assert pids[name] in before, name      # never restarted: the same process
    assert pids["stage 1"] not in before and pids["stage 1"] != victim
    again = starts(out, 1)
    assert len(again) == 2 and again[1]["restarts"] == 1 and again[1]["resumed"]
    assert len(starts(out, 0)) == len(starts(out, 2)) == 1
    assert summary["test_accuracy"] > 0.3  # it learned (chance: 0.1)
    wait_for(lambda: procs.alive() == [], 10, "every process to exit")
