"""The silence watch (`pipeline.silence_timeout`) in one process, on a clock the test
moves (nothing sleeps): who is named when a process upstream goes quiet, heartbeats, blocked senders, and
a Flow that stops instead of waiting forever. The real processes: test_silent_stage.py."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.config import load_config
from pipeline.runtime.flow import Flow, Silence, Watch, watch_for
from pipeline.runtime.protocol import HEARTBEAT, check_meta
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import Message, WireError, ctrl

K, T = 3, 10.0  # three stages: positions source 0, stage k at k+1, sink 4


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def data() -> Message:
    return Message("train", versions=[1, 1, 1], meta={"step": 0, "total": 9, "n": 1})


def beat(stage: int) -> Message:
    return ctrl(HEARTBEAT, stage=stage)


def silent_name(watch: Watch) -> str | None:
    try:
        watch.check_upstream()
    except Silence as exc:
        return str(exc)
    return None


def test_the_sink_names_the_stage_nothing_comes_through(clock):
    sink = Watch(K + 1, K, T, clock=clock)
    sink.heard_from(data())
    for _ in range(3):  # stage 2 is alive and says so; stage 1 stopped
        clock.now += T / 2
        sink.heard_from(beat(2))
    line = silent_name(sink)
    assert line.startswith("sink: stage 1 has gone silent")
    assert f"{T:g} s" in line and "pipeline.silence_timeout" in line


def test_a_heartbeat_does_not_vouch_for_the_processes_above_its_stage(clock):
    sink = Watch(K + 1, K, T, clock=clock)
    sink.heard_from(data())
    clock.now += T + 1
    sink.heard_from(beat(0))  # stage 0 is alive, nothing has come from the source
    assert silent_name(sink).startswith("sink: source has gone silent: nothing has come "
                                        "from it")
    sink.heard_from(data())  # a message of the source passed every stage
    assert silent_name(sink) is None


def test_an_idle_stage_names_its_silent_upstream(clock):
    stage2 = Watch(3, K, T, clock=clock)
    stage2.heard_from(data())
    clock.now += T / 2
    stage2.heard_from(beat(0))  # passed stage 1 on its way: both alive
    clock.now += T / 2 + 1
    assert silent_name(stage2).startswith("stage 2: source has gone silent")
    stage2.heard_from(data())
    clock.now += T + 1  # nothing at all: its own upstream is the one
    assert silent_name(stage2).startswith("stage 2: stage 1 has gone silent")


@pytest.mark.parametrize("meta", [{"stage": 7}, {"stage": 3}, {"stage": -1}, {"stage": "1"},
                                  {"stage": True}, {}])
def test_a_malformed_heartbeat_vouches_for_nobody(clock, meta):
    sink = Watch(K + 1, K, T, clock=clock)
    sink.heard_from(data())
    clock.now += T + 1
    sink.heard_from(ctrl(HEARTBEAT, **meta))
    assert silent_name(sink).startswith("sink: stage 2 has gone silent")


@pytest.mark.parametrize("meta", [{}, {"stage": "1"}, {"stage": None}, {"stage": 1.0}])
def test_the_protocol_refuses_a_heartbeat_without_an_integer_stage(meta):
    check_meta("ctrl", beat(1).meta)
    with pytest.raises(WireError):
        check_meta("ctrl", {"op": HEARTBEAT, **meta})


def test_a_blocked_sender_stops_once_the_sink_has_ended_the_run(tmp_path):
    summary = tmp_path / "summary.json"
    w = Watch(2, K, T, summary=summary)  # stage 1
    w.check_downstream()  # no summary: the pipeline below may still be starting
    summary.write_text("{}")
    os.utime(summary, (w.started - 60, w.started - 60))  # an earlier session's
    w.check_downstream()
    os.utime(summary, (w.started + 1, w.started + 1))
    with pytest.raises(Silence, match="stage 1: the sink has ended the run"):
        w.check_downstream()


def test_nothing_is_silent_before_first_contact_so_start_order_does_not_matter(clock):
    sink = Watch(K + 1, K, T, clock=clock)
    clock.now += 100 * T  # its peers take their time to start
    assert silent_name(sink) is None
    sink.heard_from(beat(2))  # stage 2 is up: only it is watched so far
    clock.now += T + 1
    assert silent_name(sink).startswith("sink: stage 2 has gone silent")


def test_time_blocked_in_send_is_not_silence_upstream(clock):
    w = Watch(2, K, T, clock=clock)
    w.heard_from(data())
    clock.now += T + 1
    w.sent(waited=T)  # it was not listening: the upstream could not be heard
    assert silent_name(w) is None
    clock.now += T
    assert silent_name(w).startswith("stage 1: stage 0 has gone silent")


def test_only_stages_send_heartbeats_and_only_when_they_have_sent_nothing_lately(clock):
    source, stage0 = Watch(0, K, T, clock=clock), Watch(1, K, T, clock=clock)
    sink = Watch(K + 1, K, T, clock=clock)
    assert stage0.heartbeat() is None
    clock.now += T / 4
    assert stage0.heartbeat().meta == {"op": HEARTBEAT, "stage": 0}
    assert source.heartbeat() is None and sink.heartbeat() is None
    stage0.sent(0.0)
    assert stage0.heartbeat() is None


def test_watch_is_off_at_zero_and_under_torchrun(tmp_path):
    def cfg(*kv):
        return load_config(None, [("model.layers", "8,6,4"), ("out", str(tmp_path)), *kv])
    assert watch_for("stage", 0, cfg(("pipeline.silence_timeout", "0"))) is None
    assert watch_for("sink", 0, cfg(("pipeline.transport", "dist"))) is None
    on = watch_for("sink", 0, cfg(("pipeline.transport", "zmq")))
    assert on.position == 3 and on.timeout == cfg().pipeline.silence_timeout > 0
    assert on.heard == [None] * 3 and on.summary == tmp_path / "summary.json"


class TickingClock(Clock):
    """Moves one second every time it is read: a Flow spinning on an empty in-memory
    inbox sees time pass without the test sleeping."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_stage_with_a_silent_upstream_sends_heartbeats_then_stops(tmp_path):
    cfg = load_config(None, [("model.layers", "8,6,4"), ("out", str(tmp_path)),
                             ("drift.probe_every", "0"), ("pipeline.silence_timeout", "8")])
    first = Message("train", meta={"step": 0, "total": 100, "n": 2},
                    tensors={"pos": torch.rand(2, 8), "neg": torch.rand(2, 8)})
    outbox = MemoryChannel(keep=True)
    flow = Flow(MemoryChannel([first]), outbox, lambda: False,
                Watch(2, 2, 8.0, clock=TickingClock()))
    worker = StageWorker(1, cfg, flow)
    with pytest.raises(Silence, match="stage 1: stage 0 has gone silent"):
        worker.run()
    beats = [m for m in outbox.out if m.kind == "ctrl"]
    assert beats and all(m.meta == {"op": HEARTBEAT, "stage": 1} for m in beats)
    assert (tmp_path / "ckpt" / "stage1.pt").exists()  # stopped cleanly: checkpoint written


def test_a_stage_forwards_the_heartbeats_of_the_stages_above_it(tmp_path):
    cfg = load_config(None, [("model.layers", "8,6,4"), ("out", str(tmp_path)),
                             ("drift.probe_every", "0")])
    outbox = MemoryChannel(keep=True)
    StageWorker(1, cfg, Flow(MemoryChannel([beat(0), ctrl("stop")]), outbox,
                             lambda: False)).run()
    assert outbox.out[0].meta == {"op": HEARTBEAT, "stage": 0}
    assert outbox.out[0].versions == [0]
