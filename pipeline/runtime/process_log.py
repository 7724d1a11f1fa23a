"""processes.jsonl: one line per process of a pipelined run, written as the process ends.
Where its start-up went, when the first train message went through it, and its peak
memory; `ffpipe bench startup` and `ffpipe bench roofline` read it.

    started         the OS started the process (Linux /proc; absent elsewhere)
    entered         it entered `run_process`: imports done, channels wired
    ready           its role is built (a stage: layer, optimizer, drift monitor)
    first_train_in  its first train message arrived (stages, sink)
    first_train_out its first train message was handed to its outbox (source; a stage:
                    its first step is done)
    ended           its role returned (or stopped)

Times are wall-clock seconds (`time.time()`), comparable between the processes of one
host; `launch` is when the launcher started its first child, where the launcher says
(the local transport). `peak_rss_mb` is the process's high-water resident set (shared
pages such as torch's libraries included, as RSS always does); `peak_cuda_mb` the most
CUDA memory its tensors held. `dynamo_imported`: whether torch._dynamo was ever imported
(~2 s of start-up; `pipeline.optimizers` avoids it).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

from pipeline.runlog import read_jsonl
from pipeline.runtime.flow import Flow

FILE = "processes.jsonl"


def process_start_time() -> float | None:
    """When the OS started this process, as a `time.time()` value (~10 ms resolution),
    from /proc (Linux); None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    return time.time() - (uptime - started_after_boot)


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far, MiB: VmHWM from /proc (Linux), else
    getrusage (elsewhere; on Linux that also counts the image a process was exec'ed from,
    the launcher's copy), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes / KiB


class ProcessRecord:
    """The line one process adds to processes.jsonl; `mark(name)` notes a moment."""

    def __init__(self, role: str, index: int, launch: float | None = None,
                 restarts: int = 0):
        self.fields = {"role": role, "index": index, "pid": os.getpid(),
                       "host": socket.gethostname(), "restarts": restarts,
                       "launch": launch, "started": process_start_time()}
        self.mark("entered")

    def mark(self, name: str, once: bool = False) -> None:
        if not (once and name in self.fields):
            self.fields[name] = time.time()

    def append_to(self, out: str | Path, cuda_device=None) -> None:
        """Add the line (one write to a file opened for appending: lines from several
        processes do not interleave)."""
        rec = {**self.fields, "peak_rss_mb": peak_rss_mb(),
               "cpu_seconds": time.process_time(),
               "dynamo_imported": "torch._dynamo" in sys.modules}
        if cuda_device is not None and torch.cuda.is_available():
            rec["peak_cuda_mb"] = torch.cuda.max_memory_allocated(cuda_device) / (1 << 20)
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")


class ClockedFlow(Flow):
    """A Flow that notes when the first train message arrives and when the first is
    handed on."""

    def __init__(self, *args, record: ProcessRecord, **kwargs):
        super().__init__(*args, **kwargs)  # Flow's own arguments, whatever they are
        self.record = record

    def send(self, msg) -> None:
        if msg.kind == "train":  # noted as it is handed over: before the receiver has it
            self.record.mark("first_train_out", once=True)
        super().send(msg)

    def recv(self):
        msg = super().recv()
        if msg.kind == "train":
            self.record.mark("first_train_in", once=True)
        return msg

    def poll(self):
        msg = super().poll()
        if msg is not None and msg.kind == "train":
            self.record.mark("first_train_in", once=True)
        return msg


def read_processes(out: str | Path) -> list[dict]:
    """The lines of a run's processes.jsonl ([] if it has none)."""
    path = Path(out) / FILE
    return read_jsonl(path) if path.exists() else []
