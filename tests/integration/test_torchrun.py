"""The real `torchrun` (python -m torch.distributed.run) with gloo on CPU: the launch
scripts in launch/, `ffpipe train --transport dist`, and a torchrun restart that resumes
every rank from its checkpoint. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import SYNTH, free_port_block, read_jsonl, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
# 2 layers => K = 2 stages => a world of 4 ranks: source, stage 0, stage 1, sink.
DIST = [*SYNTH, "--layers", "64,100,100"]
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"}


def script(procs, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    p = subprocess.Popen(["bash", str(ROOT / "launch" / name), *args],
                         env=procs.env({**LOOPBACK, **(env or {})}), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.started.append(p)  # the fixture kills it (and its tagged children) on failure
    return p


def run_script(procs, name, args, env=None, timeout=180):
    p = script(procs, name, args, env)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def check_dist_run(out: Path, epochs: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transport"] == "dist" and summary["train_samples"] == epochs * 1600
    assert summary["test_accuracy"] > 0.3  # chance is 0.1
    assert [s["stage"] for s in summary["stages"]] == [0, 1]
    assert json.loads((out / "config.json").read_text())["model"]["layers"] == [64, 100, 100]
    return summary


def test_torchrun_local_script_runs_4_gloo_ranks_and_writes_the_run_folder(procs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_script(procs, "torchrun_local.sh",
                                   [*DIST, "--epochs", "3", "--out", str(out)])
    assert code == 0, err[-3000:]
    check_dist_run(out, 3)
    assert "test accuracy" in stdout
    assert procs.alive() == []


def test_ffpipe_train_transport_dist_runs_torchrun_itself(procs, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = procs.run(["train", *DIST, "--transport", "dist", "--epochs", "3",
                                   "--out", str(out)], timeout=180, env=LOOPBACK)
    assert code == 0, err[-3000:]
    check_dist_run(out, 3)
    assert procs.alive() == []


def test_torchrun_multinode_script_joins_two_nodes_over_c10d_on_loopback(procs, tmp_path):
    out = tmp_path / "run"
    port = free_port_block(0)
    args = [*DIST, "--epochs", "2", "--out", str(out)]
    nodes = [script(procs, "torchrun_multinode.sh", args,
                    env={"NNODES": "2", "NODE_RANK": str(i),
                         "RDZV_ENDPOINT": f"127.0.0.1:{port}", "RDZV_ID": f"test{port}"})
             for i in range(2)]
    for i, p in enumerate(nodes):
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, f"node {i}:\n{err[-3000:]}"
    check_dist_run(out, 2)
    assert procs.alive() == []


def test_torchrun_restart_after_a_killed_rank_resumes_every_rank_and_completes(
        procs, tmp_path):
    out = tmp_path / "run"
    p = script(procs, "torchrun_local.sh",
               [*DIST, "--epochs", "60", "--pipeline.ckpt_every=5", "--train.log_every=5",
                "--out", str(out)], env={"MAX_RESTARTS": "1"})

    def stage1_pid():
        path = out / "stage1.jsonl"
        if not ((out / "ckpt" / "stage1.pt").exists() and path.exists()):
            return None
        records = read_jsonl(path)
        starts = [r for r in records if r["kind"] == "start"]
        return starts[-1]["pid"] if any(r["kind"] == "train" for r in records) else None

    os.kill(wait_for(stage1_pid, 120, "stage 1 to train and checkpoint"), signal.SIGKILL)
    _, err = p.communicate(timeout=90)
    assert p.returncode == 0, err[-3000:]
    for k in range(2):
        starts = [r for r in read_jsonl(out / f"stage{k}.jsonl") if r["kind"] == "start"]
        assert len(starts) == 2 and starts[1]["restarts"] == 1
        assert starts[1]["resumed"] and starts[1]["version"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["interrupted"] and summary["test_accuracy"] > 0.3
    assert procs.alive() == []


@pytest.mark.parametrize("name", ["torchrun_local.sh", "torchrun_multinode.sh",
                                  "zmq_local.sh"])
def test_launch_scripts_print_usage_on_h(name):
    r = subprocess.run(["bash", str(ROOT / "launch" / name), "-h"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("usage:")


@pytest.mark.parametrize("missing", ["NNODES", "NODE_RANK", "RDZV_ENDPOINT"])
def test_multinode_script_names_a_missing_variable_in_one_line(missing):
    env = {**os.environ, "NNODES": "2", "NODE_RANK": "0", "RDZV_ENDPOINT": "127.0.0.1:1"}
    del env[missing]
    r = subprocess.run(["bash", str(ROOT / "launch" / "torchrun_multinode.sh"), *DIST],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"{missing} is not set" in r.stderr


def test_multinode_script_refuses_a_world_that_does_not_split_evenly_over_the_nodes():
    env = {**os.environ, "NNODES": "2", "NODE_RANK": "0", "RDZV_ENDPOINT": "127.0.0.1:1"}
    r = subprocess.run(["bash", str(ROOT / "launch" / "torchrun_multinode.sh"), *SYNTH],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2  # 3 layers = 5 ranks: not 2 x anything
    assert "5 ranks" in r.stderr and "NNODES=2" in r.stderr


def test_launch_script_reports_a_bad_option_in_one_line_before_starting_anything():
    r = subprocess.run(["bash", str(ROOT / "launch" / "torchrun_local.sh"), "--epochs", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("ffpipe: error:") and r.stderr.count("\n") == 1
