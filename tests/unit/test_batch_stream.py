"""The one batch stream: the pipelined source and the single-process schedules train on
the same batches for one seed, and a resumed stream picks up exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from pipeline.batches import BatchStream
from pipeline.config import load_config
from pipeline.datasets import load_dataset
from pipeline.ff import FFLayer
from pipeline.layer_trainer import LayerTrainer
from pipeline.runtime.flow import Flow
from pipeline.runtime.source import Source
from pipeline.schedules import train_lockstep
from pipeline.transport.memory import MemoryChannel

pytestmark = pytest.mark.timeout(120)

# 1,600 synthetic images in batches of 60: 27 steps an epoch, the last one short (40).
SMALL = [("data.dataset", "synthetic"), ("model.layers", [64, 32, 32]),
         ("model.label_strength", 4.0), ("train.batch_size", 60), ("train.lr", 0.01),
         ("train.eval_every", 0), ("train.threads", 1), ("drift.probe_every", 0)]


def config(tmp_path, name: str, *extra):
    return load_config(None, [*SMALL, ("out", str(tmp_path / name)), *extra])


@pytest.fixture(scope="module")
def ds():
    return load_dataset(load_config(None, SMALL).data)


def test_lockstep_and_the_pipelined_source_send_identical_batches_in_the_first_epoch(
        tmp_path, ds, monkeypatch):
    cfg = config(tmp_path, "source", ("train.schedule", "pipelined"), ("train.epochs", 1),
                 ("train.seed", 7))
    outbox = MemoryChannel(keep=True)
    Source(cfg, ds, Flow(None, outbox, lambda: False)).run()
    sent = [(m.tensors["pos"], m.tensors["neg"]) for m in outbox.out if m.kind == "train"]

    seen = []
    train_step = LayerTrainer.train_step

    def spy(self, pos, neg, progress):
        if self.index == 0:
            seen.append((pos.clone(), neg.clone()))
        return train_step(self, pos, neg, progress)

    monkeypatch.setattr(LayerTrainer, "train_step", spy)
    train_lockstep(config(tmp_path, "lockstep", ("train.schedule", "lockstep"),
                          ("train.epochs", 1), ("train.seed", 7)), ds)

    assert len(sent) == len(seen) == BatchStream(cfg, ds).per_epoch == 27
    for step, ((sp, sn), (lp, ln)) in enumerate(zip(sent, seen)):
        assert torch.equal(sp, lp) and torch.equal(sn, ln), step


@pytest.mark.parametrize("start", [0, 1, 26, 27, 40, 80])
def test_a_stream_restarted_at_step_s_yields_exactly_the_tail_of_the_full_stream(
        tmp_path, ds, start):
    stream = BatchStream(config(tmp_path, "r", ("train.epochs", 3)), ds)
    full, tail = list(stream.batches()), list(stream.batches(start))
    assert len(full) == stream.total == 81 and len(tail) == stream.total - start
    for a, b in zip(full[start:], tail):
        assert (a.step, a.epoch) == (b.step, b.epoch)
        assert torch.equal(a.idx, b.idx) and torch.equal(a.wrong, b.wrong)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_negatives_never_carry_the_true_label(tmp_path, ds):
    stream = BatchStream(config(tmp_path, "n", ("train.epochs", 3)), ds)
    for b in stream.batches():
        assert not (b.wrong == b.y).any()
        pos, neg = stream.pair(b.x, b.y, b.wrong)
        assert torch.equal(pos[:, :stream.C].argmax(1), b.y)
        assert not (neg[:, :stream.C].argmax(1) == b.y).any()


def test_different_seeds_and_epochs_give_different_permutations(tmp_path, ds):
    def first_batches(seed):
        stream = BatchStream(config(tmp_path, "s", ("train.epochs", 2),
                                    ("train.seed", seed)), ds)
        return [torch.cat([b.idx for b in stream.batches() if b.epoch == e]) for e in (0, 1)]

    (a0, a1), (b0, b1) = first_batches(0), first_batches(1)
    assert not torch.equal(a0, b0) and not torch.equal(a1, b1)
    assert not torch.equal(a0, a1)
    assert torch.equal(a0.sort().values, torch.arange(len(ds.x_train)))  # a permutation


def test_hard_negatives_replace_wrong_labels_without_shifting_the_batches(tmp_path, ds):
    cfg = config(tmp_path, "h", ("train.epochs", 2), ("train.schedule", "lockstep"),
                 ("train.negatives", "hard"))
    stream = BatchStream(cfg, ds)
    torch.manual_seed(0)
    layers = [FFLayer(64, 32), FFLayer(32, 32)]
    tables = {}

    def hard(epoch):
        tables[epoch] = stream.hard_labels(epoch, layers, skip=1)
        return tables[epoch]

    plain, hardened = list(stream.batches()), list(stream.batches(hard=hard))
    assert sorted(tables) == [0, 1]
    assert torch.equal(tables[0], stream.hard_labels(0, layers, skip=1))  # its own seed
    for a, b in zip(plain, hardened):
        assert torch.equal(a.idx, b.idx)
        assert torch.equal(b.wrong, tables[b.epoch][b.idx])
        assert not (b.wrong == b.y).any()
