"""Starting and supervising the processes of a run (not to be confused with the
top-level `launch/` folder of shell scripts, which call into this package).

    train(cfg)       what `ffpipe train` and `pipeline.train` run: validate the config,
                     check what can be checked before anything starts (preflight, the run
                     folder's rules, the data), say in one line what starts and where the
                     run goes, write config.json, then the schedule: single-process, or
                     pipelined over the chosen transport; ends with the run's model file
    local / zmq / dist   one module per transport: its wiring and its parent side
    supervise        the one supervisor every launcher and benchmark uses
    worker           `ffpipe worker`: one process of a cluster
    main_guard       a script without `if __name__ == "__main__":`, found before spawning

This module imports the transports (and torch) inside `train`: `from pipeline.processes
import train` (and `from pipeline import train`) is quick.
"""

from __future__ import annotations

import logging
import os

from pipeline.config import RunConfig, validate
from pipeline.errors import UserError
from pipeline.processes.main_guard import check_main_guard
from pipeline.runlog import announce, run_line

log = logging.getLogger(__name__)


def train(cfg: RunConfig) -> dict | None:
    """Train one run; returns its summary (None on torchrun ranks other than the sink)."""
    validate(cfg)  # a config built in code is checked as the command line's is
    pipelined = cfg.train.schedule == "pipelined"
    transport = cfg.pipeline.transport
    if pipelined and transport == "local":
        check_main_guard()
    if pipelined and transport == "dist" and "RANK" in os.environ:
        from pipeline.processes import dist
        return dist.run_rank(cfg)  # this process is a torchrun rank
    from pipeline.processes import dist, local, zmq
    from pipeline.processes.preflight import preflight
    from pipeline.processes.run_dir import claim, load_checked_dataset, write_run_config
    from pipeline.model_file import data_info, write_run_model
    from pipeline.schedules import run_single
    if pipelined and transport == "zmq":
        cfg.net.store = zmq.default_store(cfg.net)  # resolved before config.json is written
    preflight(cfg)
    claim(cfg)
    ds = load_checked_dataset(cfg)  # every check above writes nothing
    # Said after the checks, so that a refused run prints only its one-line error.
    announce(run_line(cfg))
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
