"""`--transport zmq`: every role is its own OS process (`ffpipe worker`), talking zmq
PUSH/PULL over tcp or ipc, exactly what a compose cluster or several hosts run.

    zmq_channels / version_board   a worker's wiring (its inbox, outbox and the board)
    serve                          a worker's body: wiring, then `runtime.roles.run_process`
    train_zmq                      the parent side of `ffpipe train --transport zmq`:
                                   start every worker on this machine and supervise them
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys

from torch.distributed import TCPStore

from pipeline.config import NetConfig, RunConfig
from pipeline.processes.run_dir import load_checked_dataset, write_run_config
from pipeline.processes.supervise import PopenChild, RestartBudget, run_supervised
from pipeline.runlog import read_summary
from pipeline.runtime.board import StampBoard, StoreBoard, publish_interval
from pipeline.runtime.roles import role_name, run_process, stop_on_signals
from pipeline.transport.zmq_channel import ZmqChannel, endpoint_for

log = logging.getLogger(__name__)

STORE_DIAL_WAIT_S = 5.0  # at the end of a run, for a version-store client still dialling


def default_store(net: NetConfig) -> str:
    """The version board's address: net.store, else the sink hosts it at host:base_port
    (tcp only: with ipc there is no board, and staleness comes from the stamps)."""
    if net.store or net.ipc_dir:
        return net.store
    return f"{net.host}:{net.base_port}"


def bind_endpoint(endpoint: str, net: NetConfig) -> str:
    """Receivers bind on `net.bind_host` at the port of their (connect) endpoint, so a
    compose service can listen on its container's interfaces while peers dial its name."""
    if not endpoint.startswith("tcp://") or not net.bind_host:
        return endpoint
    port = endpoint.rsplit(":", 1)[1]
    return f"tcp://{net.bind_host}:{port}"


def zmq_channels(role: str, index: int, cfg: RunConfig):
    """(inbox, outbox) of one worker; None where the role has no such hop."""
    K, net, cap = cfg.n_layers, cfg.net, cfg.pipeline.max_message_bytes
    curve = net.curve_dir or None
    hop_in = {"source": None, "stage": index, "sink": K}[role]
    hop_out = {"source": 0, "stage": index + 1, "sink": None}[role]
    inbox = outbox = None
    if hop_in is not None:
        inbox = ZmqChannel.receiver(bind_endpoint(endpoint_for(net, hop_in, K), net),
                                    hwm=net.hwm, max_bytes=cap, curve=curve)
    if hop_out is not None:
        outbox = ZmqChannel.sender(endpoint_for(net, hop_out, K), hwm=net.hwm,
                                   max_bytes=cap, curve=curve)
    return inbox, outbox


def feedback_channel(role: str, cfg: RunConfig):
    """Hard negatives: the source binds a PULL for the scores the sink pushes back (the
    receiver endpoint after the sink's); None for every other role or without them."""
    if cfg.train.negatives != "hard" or role not in ("source", "sink"):
        return None
    net, K = cfg.net, cfg.n_layers
    endpoint, curve = endpoint_for(net, K + 1, K), net.curve_dir or None
    if role == "source":
        return ZmqChannel.receiver(bind_endpoint(endpoint, net), hwm=net.hwm,
                                   max_bytes=cfg.pipeline.max_message_bytes, curve=curve)
    return ZmqChannel.sender(endpoint, hwm=net.hwm, max_bytes=cfg.pipeline.max_message_bytes,
                             curve=curve)


def version_board(role: str, cfg: RunConfig):
    """The version board is a TCPStore the sink hosts at net.store (host:port).

    Stages connect in the background: until the store answers (or if it never does),
    staleness comes from the version stamps alone, and nothing waits for it."""
    if not cfg.net.store or role == "source":
        return StampBoard()
    host, _, port = cfg.net.store.rpartition(":")
    timeout = datetime.timedelta(seconds=cfg.net.dist_timeout)
    if role == "sink":
        try:
            # Listen on exactly the configured address (TCPStore alone would listen on
            # every interface): loopback stays loopback.
            listener = socket.create_server((cfg.net.bind_host or host, int(port)))
            store = TCPStore(host, int(port), is_master=True, wait_for_workers=False,
                             timeout=timeout, master_listen_fd=listener.fileno())
        except Exception as exc:  # the run goes on without it
            log.warning("cannot host the version store at %s (%s); stages fall back to "
                        "version stamps", cfg.net.store, exc)
            return StampBoard()
        board = StoreBoard(store, publish_interval(cfg.train.log_every))
        board.listener = listener  # the store serves on this socket: keep it open
        return board
    return StoreBoard.connect_later(
        lambda: TCPStore(host, int(port), is_master=False, timeout=timeout),
        publish_interval(cfg.train.log_every))


def serve(role: str, index: int, cfg: RunConfig, restarts: int = 0) -> int:
    """The body of one zmq worker process (`restarts`: how often this role was restarted
    before, for its start record)."""
    should_stop = stop_on_signals()
    dataset = None
    if role == "source":
        dataset = load_checked_dataset(cfg)
        write_run_config(cfg)
    inbox, outbox = zmq_channels(role, index, cfg)
    board = version_board(role, cfg)
    run_process(role, index, cfg, inbox, outbox, board, should_stop,
                dataset=dataset, restarts=restarts, feedback=feedback_channel(role, cfg))
    if isinstance(board, StoreBoard) and not board.close(wait=STORE_DIAL_WAIT_S):
        # Everything is saved and every channel closed (their contexts terminated, so
        # what was queued has been sent): leave without the interpreter's shutdown, which
        # would destroy the half-built TCPStore client under its thread and abort.
        log.info("%s: version store still being dialled; exiting without it",
                 role_name(role, index))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def train_zmq(cfg: RunConfig) -> dict:
    """Start the sink, every stage and the source as `ffpipe worker` processes on this
    machine (downstream first: not required, zmq reconnects, but tidy) and supervise. A
    stage that dies may be restarted alone (`pipeline.restarts`): zmq reconnects it to
    its neighbours; the messages that were in flight to it are lost."""
    # -P: a pipeline.py in the working directory cannot shadow the installed package.
    base = [sys.executable, "-P", "-m", "pipeline", "worker", "--config",
            f"{cfg.out}/config.json"]

    def worker(role: str, index: int, restarts: int = 0) -> PopenChild:
        again = ["--pipeline.resume=true", "--restart", str(restarts)] if restarts else []
        return PopenChild(role_name(role, index),
                          base + ["--role", role, "--index", str(index), *again])

    roles = [("sink", 0)] + [("stage", k) for k in reversed(range(cfg.n_layers))] + [
        ("source", 0)]
    restart = RestartBudget(cfg.pipeline.restarts, lambda dead, attempt: worker(
        "stage", int(dead.name.split()[1]), attempt), cfg.pipeline.stop_timeout)
    run_supervised((worker(*r) for r in roles), 0, cfg.pipeline.stop_timeout, restart=restart)
    return read_summary(cfg.out)
