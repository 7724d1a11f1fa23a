"""Progress without a terminal (a log file, CI): timestamped lines at a steady interval
with rate and ETA, the first one early, one when a named phase starts, and the phase in
every line; and the first line of a run says what starts and where it goes."""

import io
import re

import pytest

from pipeline.config import load_config
from pipeline.runlog import Progress, run_line

pytestmark = pytest.mark.timeout(30)
STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def lines(stream) -> list[str]:
    return stream.getvalue().splitlines()


def test_lines_come_early_then_at_a_steady_interval_with_phase_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(1000, "lockstep", epochs=4, every=10.0, first=2.0, stream=out, clock=clock)
    p.update(50)  # the first samples: no line yet, the rate needs a moment
    assert lines(out) == []
    clock.t += 2.0
    p.update(50, loss=0.5)
    first = lines(out)
    assert len(first) == 1 and STAMP.match(first[0])
    assert "lockstep epoch 1/4: 100/1000 samples (10%)" in first[0]
    assert "50 samples/s" in first[0] and "ETA 0:00:18" in first[0]  # 900 left at 50/s
    assert "loss 0.5" in first[0]
    for _ in range(9):  # 9 s more: still within the interval
        clock.t += 1.0
        p.update(50)
    assert len(lines(out)) == 1
    clock.t += 1.0
    p.update(50, acc=0.875)
    second = lines(out)[-1]
    assert len(lines(out)) == 2 and "epoch 3/4" in second and "acc 87.5%" in second


def test_a_named_phase_gets_its_own_line_at_once_and_no_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(None, "pipelined", epochs=2, stream=out, clock=clock)
    p.phase("starting processes")
    assert "pipelined starting processes: 0 samples" in lines(out)[-1]
    p.set_total(400, done=100)  # a resumed stream: 100 samples were done before
    p.phase(None)
    assert "pipelined epoch 1/2: 100/400 samples (25%)" in lines(out)[-1]
    clock.t += 1.0
    p.update(300)
    p.phase("final evaluation")
    assert "pipelined final evaluation: 400/400" in lines(out)[-1]
    assert "ETA" not in lines(out)[-1]
    p.close()
    assert "pipelined done: 400/400" in lines(out)[-1]
    assert all(STAMP.match(line) for line in lines(out))


def test_sequential_names_the_layer_and_its_epoch():
    clock, out = Clock(), io.StringIO()
    p = Progress(600, "sequential", epochs=3, layers=2, stream=out, clock=clock)
    p.update(350)
    assert p.current_phase() == "layer 1 epoch 1/3"
    p.update(250)
    assert p.current_phase() == "layer 1 epoch 3/3"


def test_the_first_line_names_what_starts_and_where_the_run_goes():
    cfg = load_config(None, {"data.dataset": "synthetic", "out": "runs/x", "train.epochs": 3})
    line = run_line(cfg)
    assert line.startswith("pipelined: starting 5 processes (source, 3 stages, sink)")
    assert "shared memory" in line and "64-1000-1000-1000" in line and line.endswith("runs/x")
    single = run_line(load_config(None, {"train.schedule": "lockstep", "out": "runs/y"}))
    assert single.startswith("lockstep: training every layer in this process (cpu)")


def test_a_short_run_shows_its_rate_at_the_first_epoch_boundary():
    clock, out = Clock(), io.StringIO()
    p = Progress(400, "pipelined", epochs=2, every=10.0, first=2.0, stream=out, clock=clock)
    p.update(100)
    clock.t += 0.5  # well before `first`
    p.update(50)
    assert lines(out) == []  # still epoch 1 (200 samples each)
    p.update(100)  # epoch 2 starts
    assert len(lines(out)) == 1
    assert "pipelined epoch 2/2: 250/400" in lines(out)[0] and "ETA" in lines(out)[0]
    p.update(50)  # later boundaries do not add lines: the interval rules again
    assert len(lines(out)) == 1
