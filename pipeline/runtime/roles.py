"""One process of a pipeline, whatever started it: the body every transport's processes
run (local children, `ffpipe worker`, torchrun ranks, compose containers).

    setup_process  threads, device, allocator: before the role builds anything
    run_process    play one role over an inbox and an outbox until the stream ends or a
                   stop is asked for; always closes both channels, and adds the
                   process's line to processes.jsonl (`process_log`)
"""

from __future__ import annotations

import logging
import signal
import socket

import torch

from pipeline.allocator import keep_freed_memory
from pipeline.config import RunConfig
from pipeline.datasets import Dataset
from pipeline.runtime.flow import Silence, Stopped, watch_for
from pipeline.runtime.process_log import ClockedFlow, ProcessRecord
from pipeline.runtime.sink import Sink
from pipeline.runtime.source import Source
from pipeline.runtime.stage import StageWorker
from pipeline.transport.channel import Channel

log = logging.getLogger(__name__)
ROLES = ("source", "stage", "sink")


def role_name(role: str, index: int) -> str:
    return f"stage {index}" if role == "stage" else role


def stage_device(cfg: RunConfig, index: int) -> str:
    return cfg.pipeline.devices[index] if cfg.pipeline.devices else "cpu"


def setup_process(threads: int, device: str = "cpu") -> None:
    """What a training process sets before it allocates: every process that trains a
    layer reuses its step's buffers (see `allocator`), runs `threads` torch threads, and
    makes its CUDA device current, and flushes denormal floats to zero on the CPU: Adam's
    moments of a weight whose gradient stays zero (a dead unit, an always-blank border
    pixel) decay into the denormal range, where the CPU computes ~3x slower (a 1000x1000
    bf16 step on one thread: 14 ms instead of 5); values below 1e-38 change nothing else."""
    keep_freed_memory()
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device).index or 0)  # "cuda" means cuda:0


def run_process(role: str, index: int, cfg: RunConfig, inbox: Channel | None,
                outbox: Channel | None, board, should_stop, *, dataset: Dataset | None = None,
                run_start: float | None = None, restarts: int = 0,
                feedback: Channel | None = None) -> bool:
    """Play `role`; True if the stream ran to its end, False if a stop was asked for
    (the role has written its checkpoint either way). Every channel is closed on the
    way out; after a finished stream the outbox first gets `stop_timeout` seconds to
    deliver what it still holds. `feedback` is the hard-negative edge: the sink's
    sending end, the source's receiving end (None without hard negatives)."""
    record = ProcessRecord(role, index, launch=run_start, restarts=restarts)
    stage = role == "stage"
    device = stage_device(cfg, index) if stage else "cpu"
    setup_process(cfg.pipeline.threads_per_stage if stage else 1, device)
    log.info("%s on %s: transport %s", role_name(role, index), socket.gethostname(),
             cfg.pipeline.transport)
    flow = ClockedFlow(inbox, outbox, should_stop, watch_for(role, index, cfg), record=record)
    finished = False
    try:
        if role == "source":
            player = Source(cfg, dataset, flow, feedback)
        elif stage:
            player = StageWorker(index, cfg, flow, board, device, restarts)
        else:
            player = Sink(cfg, flow, run_start=run_start, feedback=feedback)
        record.mark("ready")
        player.run()
        finished = True
    except Stopped:
        log.info("%s: stopped on request; checkpoint written", role_name(role, index))
    except Silence as exc:  # the sink's exit code is the run's; the others stop cleanly
        if role == "sink":
            raise
        log.warning("%s; stopped, checkpoint written", exc)
    finally:
        record.mark("ended")
        if finished and outbox is not None:
            outbox.finish(cfg.pipeline.stop_timeout)
        for ch in (inbox, outbox, feedback):
            if ch is not None:
                ch.close()
        try:
            record.append_to(cfg.out, device if device.startswith("cuda") else None)
        except OSError as exc:  # a diagnostic: never what fails a run
            log.warning("%s: could not write processes.jsonl (%s)", role_name(role, index),
                        exc)
    return finished


def stop_on_signals():
    """SIGINT/SIGTERM ask for a clean stop (checkpoint, then exit) instead of killing the
    process; returns the `should_stop` callable for `run_process`."""
    asked = []

    def handler(signum, frame):
        asked.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(asked)
