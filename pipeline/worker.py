"""`ffpipe worker`: one process of a cluster (source, stage k or sink) over zmq or dist.

What torchrun, docker compose and `ffpipe train --transport zmq` all start. Settings come
from (lowest first) a TOML `--config`, a resolved `--config-json` (a run's config.json),
`FFPIPE_*` environment variables, then command-line flags:

    FFPIPE_ROLE=stage FFPIPE_INDEX=1 FFPIPE_EPOCHS=5 FFPIPE_NET__HOST=stage1 ffpipe worker

`FFPIPE_<SHORT_FLAG>` (EPOCHS, LAYERS, DATASET, DATA_DIR, OUT, SEED, ...) or
`FFPIPE_<SECTION>__<KEY>` (NET__BASE_PORT, TRAIN__LR, ...) name any config key.

Under torchrun (`--transport dist`, RANK set) the role comes from the rank: 0 is the
source, 1..K the stages, K+1 the sink.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path

from pipeline.config import SHORT_FLAGS, RunConfig, load_config, to_dict
from pipeline.errors import ConfigError
from pipeline.runlog import write_json_atomic
from pipeline.runtime.board import StampBoard, StoreBoard
from pipeline.runtime.flow import Flow, Stopped
from pipeline.runtime.launcher import run_role

log = logging.getLogger(__name__)
ROLES = ("source", "stage", "sink")


def env_overrides(environ=os.environ) -> list[tuple[str, str]]:
    out = []
    for name, value in sorted(environ.items()):
        if not name.startswith("FFPIPE_") or name in ("FFPIPE_ROLE", "FFPIPE_INDEX",
                                                       "FFPIPE_CONFIG"):
            continue
        key = name[len("FFPIPE_"):].lower()
        if "__" in key:
            out.append((key.replace("__", "."), value))
        elif key.replace("_", "-") in SHORT_FLAGS:
            out.append((SHORT_FLAGS[key.replace("_", "-")], value))
        else:
            raise ConfigError(f"environment variable {name}: unknown setting; use "
                              f"FFPIPE_<SECTION>__<KEY>, e.g. FFPIPE_TRAIN__EPOCHS")
    return out


def parse_worker_args(argv: list[str], environ=os.environ):
    """-> (role, index, cfg). Flags: --role, --index, then `ffpipe train` options."""
    from pipeline.cli import parse_overrides
    role, index = environ.get("FFPIPE_ROLE"), environ.get("FFPIPE_INDEX", "0")
    rest, i = [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in ("--role", "--index"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{name} needs a value")
                value, i = argv[i + 1], i + 1
            role = value if name == "--role" else role
            index = value if name == "--index" else index
        else:
            rest.append(argv[i])
        i += 1
    path, overrides = parse_overrides(rest)
    cfg = load_config(path or environ.get("FFPIPE_CONFIG"), env_overrides(environ) + overrides)
    if "RANK" in environ and cfg.pipeline.transport == "dist":
        return None, None, cfg
    if role not in ROLES:
        raise ConfigError(f"--role: give one of {', '.join(ROLES)} (or FFPIPE_ROLE)")
    try:
        index = int(index)
    except ValueError:
        raise ConfigError(f"--index: expected an integer, got {index!r}") from None
    K = len(cfg.model.layers) - 1
    if role == "stage" and not 0 <= index < K:
        raise ConfigError(f"--index: stage index must be in 0..{K - 1} for {K} layers")
    return role, index, cfg


def install_stop_handlers() -> callable:
    """SIGINT/SIGTERM ask for a clean stop (checkpoint, then exit) instead of dying."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: flag["stop"]


def zmq_channels(role: str, index: int, cfg: RunConfig):
    from pipeline.transport.zmq_channel import ZmqChannel, endpoint_for
    K = len(cfg.model.layers) - 1
    net, cap = cfg.net, cfg.pipeline.max_message_mb << 20
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


def bind_endpoint(endpoint: str, net) -> str:
    """Receivers bind on `net.bind_host` at the port of their (connect) endpoint, so a
    compose service can listen on its container's interfaces while peers dial its name."""
    if not endpoint.startswith("tcp://") or not net.bind_host:
        return endpoint
    port = endpoint.rsplit(":", 1)[1]
    return f"tcp://{net.bind_host}:{port}"


def version_board(role: str, cfg: RunConfig):
    """zmq: the version board is a TCPStore the sink hosts at net.store (host:port).

    Stages connect in the background: until the store answers (or if it never does),
    staleness comes from the version stamps alone, and nothing waits for it."""
    if not cfg.net.store or role == "source":
        return StampBoard()
    import datetime
    from torch.distributed import TCPStore
    host, _, port = cfg.net.store.rpartition(":")
    timeout = datetime.timedelta(seconds=cfg.net.dist_timeout)
    every = max(1, cfg.train.log_every // 4)
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
        board = StoreBoard(store, every)
        board.listener = listener  # the store serves on this socket: keep it open
        return board
    return StoreBoard.connect_later(
        lambda: TCPStore(host, int(port), is_master=False, timeout=timeout), every)


def dist_role(cfg: RunConfig):
    """Join the torchrun job; -> (role, index, inbox, outbox, board)."""
    from torch.distributed import distributed_c10d
    from pipeline.transport.dist_channel import DistChannel, init_dist
    K = len(cfg.model.layers) - 1
    rank, world, local_rank, device = init_dist(cfg.net.dist_backend, cfg.net.dist_timeout)
    if world != K + 2:
        raise ConfigError(f"torchrun world size {world} != {K} layers + source + sink; "
                          f"use --nproc-per-node={K + 2}")
    cap = cfg.pipeline.max_message_mb << 20
    role, index = ("source", 0) if rank == 0 else ("sink", 0) if rank == K + 1 else (
        "stage", rank - 1)
    if device.type == "cuda" and role == "stage":
        cfg.pipeline.devices = [str(device)] * K
    inbox = None if rank == 0 else DistChannel(rank - 1, role="recv", max_bytes=cap,
                                               device=device)
    outbox = None if rank == K + 1 else DistChannel(rank + 1, role="send", max_bytes=cap,
                                                    device=device)
    board = StoreBoard(distributed_c10d._get_default_store(),
                       every=max(1, cfg.train.log_every // 4))
    return role, index, inbox, outbox, board


def worker_main(argv: list[str], environ=os.environ) -> int:
    role, index, cfg = parse_worker_args(argv, environ)
    restarts = int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts:
        log.info("torchrun restart %d: every process resumes from its checkpoint", restarts)
        cfg.pipeline.resume = True
    if cfg.pipeline.transport == "dist":
        role, index, inbox, outbox, board = dist_role(cfg)
    elif cfg.pipeline.transport == "zmq":
        inbox, outbox = zmq_channels(role, index, cfg)
        board = version_board(role, cfg)
    else:
        raise ConfigError("ffpipe worker runs the zmq or dist transport; set --transport zmq "
                          "(local runs use `ffpipe train`)")
    return serve(role, index, cfg, inbox, outbox, board, restarts)


def serve(role, index, cfg, inbox, outbox, board, restarts: int = 0) -> int:
    should_stop = install_stop_handlers()
    flow = Flow(inbox, outbox, should_stop)
    extra = {"restarts": restarts}
    if role == "source":
        from pipeline.datasets import load_dataset
        from pipeline.train import check_data_fits
        ds = load_dataset(cfg.data)
        check_data_fits(cfg, ds.input_dim, ds.num_classes)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(cfg.out) / "config.json", to_dict(cfg))
        extra["dataset"] = ds
    log.info("%s %s on %s: transport %s", role, index if role == "stage" else "",
             socket.gethostname(), cfg.pipeline.transport)
    finished = False
    try:
        run_role(role, index, cfg, flow, board, extra)
        finished = True
    except Stopped:
        log.info("%s: stopped on request; checkpoint written", role)
        return 0
    finally:
        if finished and hasattr(outbox, "linger_ms"):
            # The last messages (final evaluation, stop) may still sit in zmq's queue
            # while downstream works through its backlog: give them time to leave.
            outbox.linger_ms = int(cfg.pipeline.stop_timeout * 1000) * 3
        for ch in (inbox, outbox):
            if ch is not None:
                ch.close()
        if cfg.pipeline.transport == "dist":
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0
