"""Starting and supervising the processes of a run (not to be confused with the
top-level `launch/` folder of shell scripts, which call into this package).

    train(cfg)       what `ffpipe train` and `pipeline.train` run: check what can be
                     checked before anything starts (preflight, the run folder's rules,
                     the data), write config.json, then the schedule: single-process, or
                     pipelined over the chosen transport; ends with the run's model file
    local / zmq / dist   one module per transport: its wiring and its parent side
    supervise        the one supervisor every launcher and benchmark uses
    worker           `ffpipe worker`: one process of a cluster
"""

from __future__ import annotations

import logging
import os

from pipeline.config import RunConfig
from pipeline.errors import UserError
from pipeline.model_file import data_info, write_run_model
from pipeline.processes import dist, local, zmq
from pipeline.processes.preflight import preflight
from pipeline.processes.run_dir import claim, load_checked_dataset, write_run_config
from pipeline.schedules import run_single

log = logging.getLogger(__name__)


def train(cfg: RunConfig) -> dict | None:
    """Train one run; returns its summary (None on torchrun ranks other than the sink)."""
    pipelined = cfg.train.schedule == "pipelined"
    transport = cfg.pipeline.transport
    if pipelined and transport == "dist" and "RANK" in os.environ:
        return dist.run_rank(cfg)  # this process is a torchrun rank
    if pipelined and transport == "zmq":
        cfg.net.store = zmq.default_store(cfg.net)  # resolved before config.json is written
    preflight(cfg)
    claim(cfg)
    ds = load_checked_dataset(cfg)  # every check above writes nothing
    log.info("run folder: %s", cfg.out)
    write_run_config(cfg)
    if not pipelined:
        return run_single(cfg, ds)  # writes its model file itself
    if transport == "zmq":
        summary = zmq.train_zmq(cfg)
    elif transport == "dist":
        summary = dist.train_torchrun(cfg)
    else:
        summary = local.train_local(cfg, ds)
    # Every process has exited (a failed or interrupted run raised above), so the stages'
    # checkpoints hold the final weights: the launcher makes them one model file.
    if summary.get("test_accuracy") is not None and not summary.get("interrupted"):
        try:
            write_run_model(cfg.out, cfg, data_info(ds))
        except UserError as exc:  # the run itself succeeded: keep its result
            log.warning("no model file: %s (`ffpipe evaluate %s` retries)", exc, cfg.out)
    return summary


__all__ = ["train"]
