"""Hard negatives in the pipelined schedule: scores travel source -> stages -> sink ->
source, and every negative the source sends carries a wrong label.

The first test runs the real roles (Source, StageWorker, Sink, the feedback edge) in
threads of this process, joined by queues, with a tap on the source's hop that keeps
every train message: so each negative can be checked against its positive. The others
run `ffpipe train` on each transport and read what the run reports.
"""

import json
import queue
import threading

import pytest

from pipeline.config import load_config
from pipeline.datasets import load_dataset
from pipeline.overrides import parse_overrides
from pipeline.processes.run_dir import write_run_config
from pipeline.runtime.flow import Flow
from pipeline.runtime.sink import Sink
from pipeline.runtime.source import Source
from pipeline.runtime.stage import StageWorker
from pipeline.transport.channel import Channel
from tests.conftest import SYNTH, free_port_block, read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class QueueChannel(Channel):
    """A bounded hop between two threads; `tap` keeps every message sent through it."""

    def __init__(self, size: int = 4, tap: bool = False):
        super().__init__()
        self.q, self.tapped = queue.Queue(size), [] if tap else None

    def send(self, msg, timeout=None) -> bool:
        try:
            self.q.put(self.stamp(msg), block=timeout != 0, timeout=timeout or None)
        except queue.Full:
            self._next_seq, self.sent = self._next_seq - 1, self.sent - 1
            return False
        if self.tapped is not None:
            self.tapped.append(msg)
        return True

    def recv(self, timeout=None):
        try:
            return self.account(self.q.get(block=timeout != 0, timeout=timeout or None))
        except queue.Empty:
            return None


def test_every_negative_carries_a_wrong_label_while_scores_flow_back(tmp_path):
    _, settings = parse_overrides(SYNTH + [
        "--model.label_strength=4", "--train.negatives=hard", "--epochs=3",
        "--probe-every=0", "--eval-every=0", f"--out={tmp_path}"])
    cfg = load_config(None, settings)
    ds = load_dataset(cfg.data)
    write_run_config(cfg)
    K = cfg.n_layers
    hops = [QueueChannel(tap=(k == 0)) for k in range(K + 1)]
    feedback = QueueChannel()
    stop = lambda: False  # noqa: E731
    roles = [lambda: Source(cfg, ds, Flow(None, hops[0], stop), feedback).run(),
             *[lambda k=k: StageWorker(k, cfg, Flow(hops[k], hops[k + 1], stop)).run()
               for k in range(K)],
             lambda: Sink(cfg, Flow(hops[K], None, stop), feedback=feedback).run()]
    errors = []

    def play(role):
        try:
            role()
        except BaseException as exc:  # surfaced below, with the role's traceback
            errors.append(exc)
            raise

    threads = [threading.Thread(target=play, args=(r,), daemon=True) for r in roles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors and not any(t.is_alive() for t in threads)

    C = ds.num_classes
    trains = [m for m in hops[0].tapped if m.kind == "train"]
    assert len(trains) == cfg.train.epochs * -(-len(ds.x_train) // cfg.train.batch_size)
    for m in trains:
        true = m.tensors["pos"][:, :C].argmax(1)
        wrong = m.tensors["neg"][:, :C].argmax(1)
        assert not (true == wrong).any(), f"a negative with its true label at step {m.meta}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    hard = summary["hard_negatives"]
    assert hard["score_chunks_received"] > 0 and hard["feedback_dropped"] == 0
    tables = [r for r in read_jsonl(tmp_path / "sink.jsonl") if r["kind"] == "hard_negatives"]
    assert tables and tables[-1]["scored_fraction"] > 0.5  # the later epochs used scores
    assert summary["test_accuracy"] > 0.8


@pytest.mark.parametrize("transport", ["local", "zmq", "dist"])
def test_hard_negatives_run_on_every_transport(procs, tmp_path, transport):
    out = tmp_path / "run"
    extra = ["--net.base_port", str(free_port_block(6))] if transport == "zmq" else []
    code, _, err = procs.run(["train", *SYNTH, "--model.label_strength=4", "--epochs", "3",
                              "--train.negatives", "hard", "--transport", transport,
                              "--out", str(out), *extra], timeout=240)
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8
    assert summary["hard_negatives"]["score_chunks_received"] > 0
