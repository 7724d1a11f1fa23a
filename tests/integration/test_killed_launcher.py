"""A launcher killed outright (SIGKILL: no handler runs, nothing is cleaned up by it)
takes its workers with it: local children watch their parent, zmq workers get SIGTERM
from the kernel (parent-death signal), and each stops, checkpointing first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import SYNTH, free_port_block, trained, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.parametrize("transport", ["local", "zmq"])
def test_a_sigkilled_launcher_leaves_no_worker_behind_and_they_checkpoint(
        procs, tmp_path, transport):
    out = tmp_path / "run"
    # Output to a file: the workers inherit it and write on after the launcher is gone.
    with (tmp_path / "log").open("w") as log:
        p = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *SYNTH, "--layers",
                              "64,40,40", "--epochs", "500", "--out", str(out),
                              "--train.log_every=5", "--transport", transport,
                              "--net.base_port", str(free_port_block(3))],
                             env=procs.env(), stdout=log, stderr=log)
    procs.started.append(p)
    wait_for(lambda: trained(out, 1), 120, "the last stage to train")
    workers = [pid for pid in procs.alive() if pid != p.pid]
    assert len(workers) >= 4  # source, two stages, sink (and spawn's helper, if any)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    wait_for(lambda: procs.alive() == [], 20, "every worker to exit")
    for name in ("source", "stage0", "stage1"):
        assert (out / "ckpt" / f"{name}.pt").exists(), name  # they stopped, not died
