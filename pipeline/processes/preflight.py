"""Mistakes a user can make that would otherwise surface only after the processes have
started (as tracebacks, with files left behind): found here first, each in one line."""

from __future__ import annotations

import errno
import importlib.util
import socket
from pathlib import Path

import torch

from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.processes.zmq import default_store
from pipeline.tensorboard_mirror import INSTALL_HINT
from pipeline.transport.zmq_channel import endpoint_for


def check_devices(devices: list[str], key: str) -> None:
    """Every CUDA device named exists on this machine."""
    wanted = [d for d in devices if d.startswith("cuda")]
    if not wanted:
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: {wanted[0]} asked for, but this torch has no CUDA device "
                          f"(torch {torch.__version__}); use cpu, or install a CUDA build")
    count = torch.cuda.device_count()
    for d in wanted:
        index = torch.device(d).index or 0
        if index >= count:
            raise ConfigError(f"{key}: {d} asked for, but this machine has {count} GPU(s) "
                              f"(cuda:0..cuda:{count - 1})")


def check_tensorboard(cfg: RunConfig) -> None:
    """Before any process starts: each would otherwise fail on its own when it opens its
    mirror."""
    if cfg.log.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(INSTALL_HINT)


def check_port_free(host: str, port: int, what: str) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} ({what}) is in use; choose a free block "
                              f"with --net.base_port") from None
        # Not an address of this machine: the workers run elsewhere, nothing to check here.


def check_zmq_endpoints(cfg: RunConfig) -> None:
    """The ports (or ipc folder) the receivers and the version board will bind."""
    K, net = cfg.n_layers, cfg.net
    if net.ipc_dir and not Path(net.ipc_dir).is_dir():
        raise ConfigError(f"net.ipc_dir: {net.ipc_dir} is not a folder; create it first")
    names = [f"stage {k}'s inbox" for k in range(K)] + ["the sink's inbox"]
    if cfg.train.negatives == "hard":
        names.append("the source's feedback inbox (hard negatives)")
    for hop, what in enumerate(names):
        endpoint = endpoint_for(net, hop, K)
        if endpoint.startswith("tcp://"):
            host, _, port = endpoint[len("tcp://"):].rpartition(":")
            check_port_free(host.strip("[]"), int(port), what)
    store = default_store(net)
    if store:
        host, _, port = store.rpartition(":")
        check_port_free(host, int(port), "the version board (net.store)")


def preflight(cfg: RunConfig) -> None:
    """Everything `ffpipe train` can check before it writes or starts anything."""
    pipelined = cfg.train.schedule == "pipelined"
    if pipelined:
        check_devices(cfg.pipeline.devices, "pipeline.devices")
    else:
        check_devices([cfg.train.device], "train.device")
    check_tensorboard(cfg)
    if pipelined and cfg.pipeline.transport == "zmq":
        check_zmq_endpoints(cfg)
