"""`--transport dist`: one torchrun rank per role (0 the source, 1..K the stages, K+1
the sink), hops over torch.distributed send/recv (`transport.dist_channel`).

    init_dist        join the job (backend choice, per-attempt store prefix)
    run_rank         the one entry of a rank: `python -m pipeline train --transport dist`
                     (what the launch/ scripts and train_torchrun start) and
                     `ffpipe worker` under torchrun both come here
    train_torchrun   the parent side of `ffpipe train --transport dist` on one machine
"""

from __future__ import annotations

import datetime
import logging
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from pipeline.config import RunConfig
from pipeline.errors import ConfigError, UserError
from pipeline.processes.run_dir import load_checked_dataset, write_run_config
from pipeline.processes.supervise import PopenChild, run_supervised
from pipeline.runlog import read_summary
from pipeline.runtime.board import StoreBoard, publish_interval
from pipeline.runtime.roles import run_process, stop_on_signals
from pipeline.transport.dist_channel import DistChannel
from pipeline.transport.store_channel import StoreChannel

log = logging.getLogger(__name__)


def init_dist(backend: str | None, timeout_s: float):
    """Join the `torchrun` job: returns (rank, world_size, local_rank, device).

    backend "auto" picks NCCL when every local rank owns a GPU (LOCAL_WORLD_SIZE <= the
    GPU count), else gloo. With NCCL the rank uses `cuda:LOCAL_RANK`. MASTER_ADDR/MASTER_PORT
    come from the environment (torchrun sets them).
    """
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in os.environ]
    if missing:
        raise UserError(f"{', '.join(missing)} not set: the dist transport runs under "
                        f"torchrun, e.g. `torchrun --nproc-per-node K+2 -m pipeline train --transport dist ...`")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend in (None, "auto"):
        backend = "nccl" if gpus >= local_world else "gloo"
    if backend == "nccl":
        if gpus < local_world:
            raise UserError(f"backend nccl needs one GPU per local rank: {local_world} ranks, "
                            f"{gpus} GPU(s) here; use --net.dist_backend gloo")
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = datetime.timedelta(seconds=timeout_s)
    if "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        return rank, world, local_rank, device
    # torchrun keeps its store across restarts (--max-restarts): without a fresh key
    # prefix per attempt, restarted ranks read the dead attempt's gloo addresses.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=rank == 0 and not agent_store, wait_for_workers=False,
                          timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"ffpipe/attempt{attempt}", store),
                            rank=rank, world_size=world, timeout=timeout)
    return rank, world, local_rank, device

def rank_role(rank: int, n_layers: int) -> tuple[str, int]:
    if rank == 0:
        return "source", 0
    return ("sink", 0) if rank == n_layers + 1 else ("stage", rank - 1)


def run_rank(cfg: RunConfig) -> dict | None:
    """Play this torchrun rank's role; the sink returns the run's summary. After a
    torchrun restart (--max-restarts) every role resumes from its checkpoint."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts:
        log.info("torchrun restart %d: every role resumes from its checkpoint", restarts)
        cfg.pipeline.resume = "true"
    should_stop = stop_on_signals()
    K = cfg.n_layers
    rank, world, _, device = init_dist(cfg.net.dist_backend, cfg.net.dist_timeout)
    try:
        if world != K + 2:
            raise ConfigError(f"torchrun world size {world} != {K} layers + source + sink; "
                              f"use --nproc-per-node={K + 2}")
        role, index = rank_role(rank, K)
        if device.type == "cuda" and role == "stage":
            cfg.pipeline.devices = [str(device)] * K
        dataset = None
        if role == "source":
            dataset = load_checked_dataset(cfg)
            write_run_config(cfg)
        cap = cfg.pipeline.max_message_bytes
        inbox = None if rank == 0 else DistChannel(rank - 1, role="recv", max_bytes=cap,
                                                   device=device)
        outbox = None if rank == K + 1 else DistChannel(rank + 1, role="send", max_bytes=cap,
                                                        device=device)
        store = distributed_c10d._get_default_store()
        board = StoreBoard(store, publish_interval(cfg.train.log_every))
        # Hard negatives: scores go back through the job's store, never a blocking send
        # upstream (see transport.store_channel).
        feedback = (StoreChannel(store, "scores", max_bytes=cap)
                    if cfg.train.negatives == "hard" and role in ("source", "sink") else None)
        run_process(role, index, cfg, inbox, outbox, board, should_stop, dataset=dataset,
                    restarts=restarts, feedback=feedback)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return read_summary(cfg.out) if role == "sink" else None


def train_torchrun(cfg: RunConfig) -> dict:
    """torchrun --standalone with one rank per role, on the resolved config.json."""
    # -P (and --no-python, so each rank is our own `python -P` command): a pipeline.py or
    # torch.py in the working directory cannot shadow the installed packages.
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", "--no-python",
           f"--nproc-per-node={cfg.n_layers + 2}", sys.executable, "-P", "-m", "pipeline",
           "train", "--config", f"{cfg.out}/config.json"]
    start = [PopenChild("torchrun", cmd, {"OMP_NUM_THREADS": str(cfg.pipeline.threads_per_stage)})]
    run_supervised(start, 0, cfg.pipeline.stop_timeout)
    return read_summary(cfg.out)
