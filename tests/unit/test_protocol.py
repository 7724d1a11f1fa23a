"""The message protocol between roles: the meta schema of each kind, the explicit start
of a stream, and the largest message a hop must carry, checked against what a real
source and stages send."""

import pytest

from conftest import SYNTH
from pipeline.datasets import load_dataset
from pipeline.overrides import config_from_argv
from pipeline.runtime.flow import Flow
from pipeline.runtime.protocol import check_meta, max_message_bytes, start_message
from pipeline.runtime.source import Source
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import WireError, encode

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("meta", [{"op": "rm -rf"}, {}, {"op": None}, {"op": 3}])
def test_ctrl_with_an_unknown_or_missing_op_is_refused(meta):
    check_meta("ctrl", {"op": "stop"})
    with pytest.raises(WireError):
        check_meta("ctrl", meta)


@pytest.mark.parametrize("change", [{"classes": 1}, {"classes": "10"}, {"total_samples": None},
                                    {"done_samples": True}, {"step": 1.5}])
def test_start_message_fields_are_checked(change):
    good = start_message(classes=10, total_samples=100, done_samples=0, step=0)
    check_meta("ctrl", good.meta)
    with pytest.raises(WireError):
        check_meta("ctrl", {**good.meta, **change})


def source_messages(tmp_path, extra=()):
    cfg = config_from_argv([*SYNTH, "--epochs", "1", "--out", str(tmp_path), "--head",
                            "--eval-every", "20", "--probe-every", "10", *extra])
    ds = load_dataset(cfg.data)
    outbox = MemoryChannel(keep=True)
    Source(cfg, ds, Flow(None, outbox, lambda: False)).run()
    return cfg, ds, outbox.out


def test_a_stream_opens_with_start_and_every_message_fits_its_kind(tmp_path):
    cfg, ds, msgs = source_messages(tmp_path)
    assert msgs[0].kind == "ctrl" and msgs[0].meta["op"] == "start"
    assert msgs[0].meta["classes"] == ds.num_classes
    assert [m.meta["op"] for m in msgs if m.kind == "ctrl"][-1] == "stop"
    for m in msgs:
        check_meta(m.kind, m.meta)
    assert {m.kind for m in msgs} == {"ctrl", "train", "eval", "probe"}


def encoded_size(msg) -> int:
    return sum(memoryview(f).nbytes for f in encode(msg))


def test_no_message_of_source_or_stages_exceeds_the_largest_a_hop_must_carry(tmp_path):
    cfg, ds, msgs = source_messages(tmp_path, ["--pipeline.eval_batch", "300"])
    limit = max_message_bytes(cfg, ds.num_classes)
    sizes = [encoded_size(m) for m in msgs]
    for k in range(cfg.n_layers):  # each stage's output is the next hop's traffic
        out = MemoryChannel(keep=True)
        StageWorker(k, cfg, Flow(MemoryChannel(msgs), out, lambda: False)).run()
        msgs = out.out
        sizes += [encoded_size(m) for m in msgs]
    assert max(sizes) <= limit
    assert max(sizes) > limit / 2  # the bound is tight enough to size a ring by
