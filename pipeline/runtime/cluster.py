"""Launchers for the cluster transports on this machine.

`--transport zmq`: starts `ffpipe worker` for the source, every stage and the sink as
separate OS processes talking zmq over 127.0.0.1 tcp (or ipc), exactly what a compose
cluster or several hosts run.
`--transport dist`: runs `torchrun --standalone --nproc-per-node=K+2 -m pipeline train`
with the same resolved config, one rank per role.

Both supervise their children like the local launcher: a child that fails stops the
rest and is named; Ctrl-C reaches every child (same process group), each stops cleanly
and flushes its checkpoint, and stragglers are killed after `stop_timeout` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import RunConfig, to_dict
from pipeline.errors import StageFailed
from pipeline.runlog import write_json_atomic
from pipeline.runtime.launcher import describe_exit

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the launcher dies (Linux), so a killed
    launcher leaves no orphan workers behind."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                            preexec_fn=_die_with_parent)


def supervise_popen(procs: dict[str, subprocess.Popen], done: str, timeout: float) -> None:
    """Wait until `done` exits 0; raise StageFailed as soon as any process fails."""
    try:
        while True:
            for name, p in procs.items():
                code = p.poll()
                if code not in (None, 0):
                    raise StageFailed(f"{name} died ({describe_exit(code)}); "
                                      f"stopped the other processes")
            if procs[done].poll() == 0:
                return
            time.sleep(0.2)
    except BaseException:
        stop_popen(procs, timeout)
        raise
    finally:
        # Success path: every process got the stop message; give them time to exit.
        stop_popen(procs, timeout, ask=False)


def stop_popen(procs: dict[str, subprocess.Popen], timeout: float, ask: bool = True) -> None:
    if ask:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # workers treat it as "checkpoint and stop"
    deadline = time.monotonic() + timeout
    for name, p in procs.items():
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, timeout)
            p.kill()
            p.wait(5)


def train_zmq(cfg: RunConfig) -> dict:
    K = len(cfg.model.layers) - 1
    if not cfg.net.store and not cfg.net.ipc_dir:
        cfg.net.store = f"{cfg.net.host}:{cfg.net.base_port}"  # the sink hosts it
    cfg_path = Path(cfg.out) / "config.json"
    write_json_atomic(cfg_path, to_dict(cfg))
    base = [sys.executable, "-m", "pipeline", "worker", "--config", str(cfg_path)]
    roles = [("sink", 0)] + [("stage", k) for k in reversed(range(K))] + [("source", 0)]
    procs = {}
    for role, index in roles:  # downstream first: not required (zmq reconnects), but tidy
        name = f"stage {index}" if role == "stage" else role
        procs[name] = _start(base + ["--role", role, "--index", str(index)])
    supervise_popen(procs, "sink", cfg.pipeline.stop_timeout)
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def train_dist_torchrun(cfg: RunConfig) -> dict:
    K = len(cfg.model.layers) - 1
    cfg_path = Path(cfg.out) / "config.json"
    write_json_atomic(cfg_path, to_dict(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={K + 2}", "-m", "pipeline", "train", "--config", str(cfg_path)]
    procs = {"torchrun": _start(cmd, {"OMP_NUM_THREADS": str(cfg.pipeline.threads_per_stage)})}
    supervise_popen(procs, "torchrun", cfg.pipeline.stop_timeout)
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def train_dist_rank(cfg: RunConfig) -> dict | None:
    """This process is one torchrun rank: play its role; the sink returns the summary."""
    from pipeline.worker import dist_role, serve
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts:
        log.info("torchrun restart %d: resuming every role from its checkpoint", restarts)
        cfg.pipeline.resume = True
    role, index, inbox, outbox, board = dist_role(cfg)
    serve(role, index, cfg, inbox, outbox, board, restarts)
    if role == "sink":
        return json.loads((Path(cfg.out) / "summary.json").read_text())
    return None
