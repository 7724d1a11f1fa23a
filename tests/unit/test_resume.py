"""A resume is consistent: the source restarts from the oldest point any stage trained
to, every stage ends having trained on exactly the run's samples, none twice, none
missed. Driven in one process (source and stages over in-memory channels)."""

import pytest

from conftest import SYNTH
from pipeline.datasets import load_dataset
from pipeline.overrides import config_from_argv
from pipeline.runtime.flow import Flow, Stopped
from pipeline.runtime.source import Source
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel

pytestmark = pytest.mark.timeout(60)


def config(tmp_path, *extra):
    return config_from_argv([*SYNTH, "--layers", "64,32,32", "--epochs", "2", "--out",
                             str(tmp_path), "--eval-every", "0", "--probe-every", "0", *extra])


def run_source(cfg, ds, stop_after=None) -> list:
    out = MemoryChannel(keep=True)
    stop = (lambda: len(out.out) >= stop_after) if stop_after else (lambda: False)
    try:
        Source(cfg, ds, Flow(None, out, stop)).run()
    except Stopped:
        pass
    return out.out


def run_stage(cfg, k, messages) -> tuple[StageWorker, list]:
    inbox, out = MemoryChannel(messages), MemoryChannel(keep=True)
    worker = StageWorker(k, cfg, Flow(inbox, out, lambda: inbox.depth() == 0))
    try:
        worker.run()
    except Stopped:  # its input ran out: what a stage killed at that point had saved
        pass
    return worker, out.out


def test_a_stage_that_died_before_its_first_checkpoint_still_trains_on_the_whole_run(
        tmp_path):
    cfg = config(tmp_path)
    ds = load_dataset(cfg.data)
    first = run_source(cfg, ds, stop_after=20)  # the start message and 19 batches
    stage0, _ = run_stage(cfg, 0, first)     # stage 0 checkpoints at its stop
    trained_before = stage0.samples
    assert 0 < trained_before                # stage 1 never ran: no checkpoint at all

    resumed = config(tmp_path, "--resume")
    stream = run_source(resumed, ds)
    assert stream[0].meta["op"] == "start" and stream[0].meta["step"] == 0  # stage 1 needs it
    stage0, out0 = run_stage(resumed, 0, stream)
    stage1, _ = run_stage(resumed, 1, out0)
    budget = cfg.train.epochs * len(ds.x_train)
    assert stage0.samples == stage1.samples == budget
    assert stage0.trainer.version == stage1.trainer.version == Source(cfg, ds, None).total
    assert stage0.resent == len([m for m in first if m.kind == "train"])
    assert stage1.resent == 0


def test_resume_starts_where_the_slowest_stage_stopped(tmp_path):
    cfg = config(tmp_path)
    ds = load_dataset(cfg.data)
    first = run_source(cfg, ds, stop_after=30)
    _, out0 = run_stage(cfg, 0, first)
    run_stage(cfg, 1, out0[:10])  # stage 1 lagged behind stage 0 when the run stopped
    stream = run_source(config(tmp_path, "--resume"), ds)
    trains = [m for m in stream if m.kind == "train"]
    stage1_trained = len([m for m in out0[:10] if m.kind == "train"])
    assert trains[0].meta["step"] == stage1_trained
