"""`--transport local`: source, one process per layer, and sink on this machine, joined
by shared-memory rings (`transport.local`) and a shared version board. Children are
forked from a fork server that imported torch once (`pipeline.fork_server`), never from
the launcher (fork after torch has started its threads can hang the child).

Children ignore SIGINT: the launcher coordinates Ctrl-C (every child is asked to stop,
flushes its checkpoint, and the launcher re-raises KeyboardInterrupt: exit code 130).
A child stops by itself if its parent dies.
"""

from __future__ import annotations

import signal
import time
import traceback

import torch.multiprocessing  # noqa: F401  its pickling rules share tensors with children

from pipeline.config import RunConfig, from_dict, to_dict
from pipeline.datasets import Dataset
from pipeline.errors import StageFailed, UserError
from pipeline.fork_server import context as child_context
from pipeline.processes.supervise import RestartBudget, SpawnedChild, run_supervised
from pipeline.runlog import read_summary
from pipeline.runtime.board import SharedBoard
from pipeline.runtime.protocol import feedback_message_bytes, max_message_bytes
from pipeline.runtime.roles import role_name, run_process
from pipeline.transport.device_ring import DeviceRingChannel
from pipeline.transport.local import ShmChannel


def launcher_watch(lifeline, every: float = 0.25):
    """`gone()`: True once the launcher has died. The launcher holds the only write end
    of `lifeline`, so its death is end-of-file on this read end. (A child forked from the
    fork server is the server's child, not the launcher's: its parent pid says nothing.)
    Checked at most every `every` seconds: the callers ask once per message."""
    state = {"next": 0.0, "gone": False}

    def gone() -> bool:
        now = time.monotonic()
        if not state["gone"] and now >= state["next"]:
            state["next"] = now + every
            state["gone"] = lifeline.poll()  # never written to: readable means EOF
        return state["gone"]
    return gone


def child_main(role: str, index: int, cfg_dict: dict, inbox, outbox, board_array, stop,
               errors, dataset, run_start, restarts: int = 0, feedback=None,
               lifeline=None) -> None:
    """Entry point of every local child (importable by name: the child unpickles it so)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    launcher_gone = launcher_watch(lifeline)
    should_stop = lambda: stop.is_set() or launcher_gone()  # noqa: E731
    try:
        run_process(role, index, from_dict(cfg_dict), inbox, outbox, SharedBoard(board_array),
                    should_stop, dataset=dataset, run_start=run_start, restarts=restarts,
                    feedback=feedback)
    except BaseException as exc:
        # A user's mistake (or a stage gone silent) is its one line; a bug its traceback.
        tb = "" if isinstance(exc, (UserError, StageFailed)) else traceback.format_exc()
        errors.put((role_name(role, index), f"{type(exc).__name__}: {exc}", tb))
        raise SystemExit(1)


def hop_channel(ctx, cfg: RunConfig, k: int, size: int) -> ShmChannel:
    """Hop k (into stage k; K: into the sink). Between two stages on CUDA devices the
    tensors stay on the GPU (`transport.device_ring`) unless pipeline.device_hops is off."""
    p, devices = cfg.pipeline, cfg.pipeline.devices
    # A hop between two stages can lose either end: a spare ring per restart of each.
    args = (ctx, p.queue_size, size, p.max_message_bytes, 1 + 2 * p.restarts)
    if (p.device_hops == "auto" and devices and 0 < k < cfg.n_layers
            and devices[k - 1].startswith("cuda") and devices[k].startswith("cuda")):
        return DeviceRingChannel(*args, device=devices[k])
    return ShmChannel(*args)


def train_local(cfg: RunConfig, ds: Dataset) -> dict:
    ctx = child_context()
    K, p = cfg.n_layers, cfg.pipeline
    size = max_message_bytes(cfg, ds.num_classes)
    hops = [hop_channel(ctx, cfg, k, size) for k in range(K + 1)]
    # Hard negatives: the sink's scores go back to the source over one more ring.
    feedback = (ShmChannel(ctx, p.queue_size, feedback_message_bytes(cfg, ds.num_classes),
                           p.max_message_bytes) if cfg.train.negatives == "hard" else None)
    board = ctx.Array("q", K, lock=False)
    stop, errors = ctx.Event(), ctx.Queue()
    # Children stop when this process dies, even by SIGKILL: they watch the read end.
    lifeline, _keep_alive = ctx.Pipe(duplex=False)
    cfg_dict, run_start = to_dict(cfg), time.time()

    def child(role: str, index: int, inbox, outbox, restarts: int = 0) -> SpawnedChild:
        d = cfg_dict if not restarts else {**cfg_dict, "pipeline": {**cfg_dict["pipeline"],
                                                                    "resume": "true"}}
        args = (role, index, d, inbox, outbox, board, stop, errors,
                ds if role == "source" else None, run_start, restarts,
                feedback if role in ("source", "sink") else None, lifeline)
        return SpawnedChild(ctx.Process(target=child_main, name=role_name(role, index),
                                        args=args), stop)

    def restart_stage(dead: SpawnedChild, attempt: int) -> SpawnedChild | None:
        k = int(dead.name.split()[1])
        if not (hops[k].replace_end() and hops[k + 1].replace_end()):
            return None
        return child("stage", k, hops[k], hops[k + 1], restarts=attempt)

    specs = [("source", 0, None, hops[0])] + [("stage", k, hops[k], hops[k + 1])
                                              for k in range(K)] + [("sink", 0, hops[K], None)]
    run_supervised((child(*spec) for spec in specs), -1, p.stop_timeout, errors,
                   RestartBudget(p.restarts, restart_stage, p.stop_timeout))
    _keep_alive.close()
    return read_summary(cfg.out)
