"""The local launcher: source, one process per layer, and sink on this machine, joined
by shared-memory channels (transport `local`), started with the spawn method.

It watches its children: if one dies, it says which and why, stops the rest and raises
`StageFailed`; on Ctrl-C it asks every child to stop, waits up to `stop_timeout` seconds
for them to flush their checkpoints, kills stragglers, and re-raises KeyboardInterrupt
(exit code 130). No child outlives it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from multiprocessing.connection import wait as wait_any
from pathlib import Path

import torch
import torch.multiprocessing as mp

from pipeline.config import RunConfig, from_dict, to_dict
from pipeline.datasets import Dataset
from pipeline.errors import StageFailed
from pipeline.runtime.board import SharedBoard
from pipeline.runtime.flow import Flow, Stopped
from pipeline.transport.local import ShmChannel

log = logging.getLogger(__name__)


def slot_bytes(cfg: RunConfig, num_classes: int) -> int:
    """Largest message any hop carries, from the config (float32 activations)."""
    w, B, C = cfg.model.layers, cfg.train.batch_size, num_classes
    d, feats = max(w[:-1]), sum(w[2:])
    head = cfg.model.head
    train = 4 * B * (2 * d + (d + feats if head else 0)) + 8 * B
    eb = cfg.pipeline.eval_batch
    evals = 4 * eb * C * (d + 1) + 8 * eb + (4 * eb * (d + feats) if head else 0)
    probe = 4 * cfg.drift.probe_size * d
    return max(train, evals, probe) + 8 * 64


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def child_main(role: str, index: int, cfg_dict: dict, inbox, outbox, board_array, stop,
               errors, extra: dict) -> None:
    """Entry point of every child process (must be importable: spawn pickles it by name)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher coordinates Ctrl-C
    parent = os.getppid()
    cfg = from_dict(cfg_dict)
    should_stop = lambda: stop.is_set() or os.getppid() != parent  # noqa: E731
    flow = Flow(inbox, outbox, should_stop)
    try:
        run_role(role, index, cfg, flow, SharedBoard(board_array), extra)
    except Stopped:
        pass
    except BaseException as exc:
        errors.put((role, index, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        raise SystemExit(1)
    finally:
        for ch in (inbox, outbox):
            if ch is not None:
                ch.close()


def run_role(role: str, index: int, cfg: RunConfig, flow: Flow, board, extra: dict):
    """Run one role to completion; shared by every transport's processes."""
    if role == "stage":
        from pipeline.runtime.stage import StageWorker
        devices = cfg.pipeline.devices
        device = devices[index] if devices else "cpu"
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        torch.set_num_threads(cfg.pipeline.threads_per_stage)
        return StageWorker(index, cfg, flow, board, device, extra.get("restarts", 0)).run()
    torch.set_num_threads(1)
    if role == "source":
        from pipeline.runtime.source import Source
        return Source(cfg, extra["dataset"], flow).run()
    from pipeline.runtime.sink import Sink
    return Sink(cfg, flow, run_start=extra.get("run_start")).run()


def role_name(role: str, index: int) -> str:
    return f"stage {index}" if role == "stage" else role


def train_pipelined(cfg: RunConfig, ds: Dataset) -> dict:
    ctx = mp.get_context("spawn")
    K = len(cfg.model.layers) - 1
    max_bytes = cfg.pipeline.max_message_mb << 20
    size = slot_bytes(cfg, ds.num_classes)
    hops = [ShmChannel(ctx, cfg.pipeline.queue_size, size, max_bytes) for _ in range(K + 1)]
    board = ctx.Array("q", K, lock=False)
    stop, errors = ctx.Event(), ctx.Queue()
    run_start = time.time()
    cfg_dict = to_dict(cfg)
    specs = [("source", 0, None, hops[0], {"dataset": ds})]
    specs += [("stage", k, hops[k], hops[k + 1], {}) for k in range(K)]
    specs.append(("sink", 0, hops[K], None, {"run_start": run_start}))
    procs = {}
    for role, index, inbox, outbox, extra in specs:
        p = ctx.Process(target=child_main, name=role_name(role, index), daemon=False,
                        args=(role, index, cfg_dict, inbox, outbox, board, stop, errors,
                              extra))
        p.start()
        procs[(role, index)] = p
    try:
        supervise(procs, errors)
    except KeyboardInterrupt:
        log.info("interrupted: stopping all stages (checkpoints are flushed)")
        raise
    finally:  # success, failure, Ctrl-C or SIGTERM: no child outlives the launcher
        shutdown(procs, stop, cfg.pipeline.stop_timeout)
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def supervise(procs: dict, errors) -> None:
    """Wait until the sink finishes; raise StageFailed as soon as any child fails."""
    sink = procs[("sink", 0)]
    while True:
        wait_any([p.sentinel for p in procs.values()], timeout=0.5)
        failure = first_failure(procs, errors)
        if failure:
            raise StageFailed(failure)
        if sink.exitcode == 0:
            return


def first_failure(procs: dict, errors) -> str | None:
    reported = {}
    while not errors.empty():
        role, index, line, tb = errors.get()
        reported[(role, index)] = line
        log.error("%s failed:\n%s", role_name(role, index), tb)
    for key, p in procs.items():
        if key in reported or (p.exitcode is not None and p.exitcode != 0):
            why = reported.get(key) or describe_exit(p.exitcode)
            return f"{role_name(*key)} died ({why}); stopped the other processes"
    return None


def shutdown(procs: dict, stop, timeout: float) -> None:
    """Ask every child to stop, wait for them, then terminate and kill what is left."""
    stop.set()
    deadline = time.monotonic() + timeout
    for p in procs.values():
        p.join(max(deadline - time.monotonic(), 0.1))
    for p in procs.values():
        if p.is_alive():
            log.warning("%s did not stop in %.0fs; terminating", p.name, timeout)
            p.terminate()
    for p in procs.values():
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)
