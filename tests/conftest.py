"""Shared helpers for tests that start real processes.

Every process a test starts carries a unique FFP_TEST_TAG in its environment, which
its children inherit; `tagged_pids(tag)` finds any of them still alive, so a test can
prove that nothing outlived the run, and the fixture kills leftovers so one failing test
cannot leak processes into the next. (The tag is not an FFPIPE_ variable: `ffpipe worker`
reads every FFPIPE_* variable as a setting and rejects unknown ones.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# Small, fast, and learnable by FF: 64-dim synthetic clusters need a stronger label, and
# small batches give enough steps in 2-3 epochs (measured: ~98 % at 2 epochs, 3 seeds).
SYNTH_BATCH = 25
SYNTH_STEPS_PER_EPOCH = 1600 // SYNTH_BATCH  # synthetic has 1,600 training images
SYNTH = ["--dataset", "synthetic", "--layers", "64,100,100,100", "--lr", "0.01",
         "--model.label_strength=4", "--threads-per-stage", "1",
         "--batch-size", str(SYNTH_BATCH)]


def tagged_pids(tag: str) -> list[int]:
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if f"FFP_TEST_TAG={tag}".encode() in (d / "environ").read_bytes():
                out.append(int(d.name))
        except OSError:
            continue
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll until `predicate()` is truthy (an event we cannot block on), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def where_is(pid: int) -> str:
    """Python stacks of a stuck process and its children, for a failure message (py-spy
    where installed; otherwise only the process tree)."""
    import shutil
    if shutil.which("py-spy"):
        r = subprocess.run(["py-spy", "dump", "--subprocesses", "--pid", str(pid)],
                           capture_output=True, text=True, timeout=30)
        return r.stdout[-6000:] + r.stderr[-1000:]
    r = subprocess.run(["ps", "-o", "pid,stat,etime,args", "--ppid", str(pid)],
                       capture_output=True, text=True)
    return r.stdout


def free_port_block(n: int) -> int:
    """A base port with n+1 free ports after it (best effort, on 127.0.0.1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n + 1 >= 65000:
            continue
        try:
            socks = []
            for p in range(base, base + n + 2):
                t = socket.socket()
                t.bind(("127.0.0.1", p))
                socks.append(t)
            for t in socks:
                t.close()
            return base
        except OSError:
            for t in socks:
                t.close()
    raise RuntimeError("no free port block")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def trained(out, k: int) -> bool:
    """Stage k of the run in `out` has logged a training step."""
    path = Path(out) / f"stage{k}.jsonl"
    return path.exists() and any(r["kind"] == "train" for r in read_jsonl(path))


class Procs:
    def __init__(self, tag: str):
        self.tag, self.started = tag, []

    def env(self, extra: dict | None = None) -> dict:
        return {**os.environ, "FFP_TEST_TAG": self.tag, "PYTHONUNBUFFERED": "1",
                **(extra or {})}

    def ffpipe(self, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=self.env(env),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.started.append(p)
        return p

    def popen(self, cmd: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=self.env(env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **kw)
        self.started.append(p)
        return p

    def run(self, args: list[str], timeout: float, env: dict | None = None):
        p = self.ffpipe(args, env)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def alive(self) -> list[int]:
        return tagged_pids(self.tag)

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
        for pid in tagged_pids(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def procs():
    p = Procs(uuid.uuid4().hex)
    yield p
    p.cleanup()


@pytest.fixture(autouse=True)
def _default_denormals():
    """`setup_process` (every in-process training run calls it) flushes denormals to zero
    for the whole process; each test starts from torch's default again."""
    yield
    import torch
    torch.set_flush_denormal(False)
