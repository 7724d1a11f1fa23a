"""Non-finite numbers never reach a layer's weights: a message carrying NaN or Inf is
rejected by the protocol checks (counted, skipped), and an optimizer step whose loss or
gradients overflow is not taken (counted, weights and version unchanged)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import load_config
from pipeline.layer_trainer import LayerTrainer
from pipeline.runtime.flow import Flow
from pipeline.runtime.protocol import all_finite, expect
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import Message, WireError, ctrl

pytestmark = pytest.mark.timeout(30)

D, C = 8, 10  # stage 0 of layers 8,6,4; synthetic label count for eval messages
BAD = [math.nan, math.inf, -math.inf]


def cfg_for(tmp_path, *overrides):
    return load_config(None, [("model.layers", f"{D},6,4"), ("out", str(tmp_path)),
                              ("drift.probe_every", "0"), *overrides])


def poisoned(shape, value: float, at=(0, 0)) -> torch.Tensor:
    t = torch.rand(shape)
    t[at if len(shape) > 1 else at[0]] = value
    return t


def train_msg(step: int, pos=None, neg=None, rows: int = 5) -> Message:
    return Message("train", meta={"step": step, "total": 100, "n": rows}, tensors={
        "pos": torch.rand(rows, D) if pos is None else pos,
        "neg": torch.rand(rows, D) if neg is None else neg})


def eval_msg(x=None, acc=None, n: int = 2) -> Message:
    return Message("eval", meta={"eval_id": 0, "chunk": 0, "n_chunks": 1, "step": 0,
                                 "final": False}, tensors={
        "x": torch.rand(n * C, D) if x is None else x,
        "acc": torch.zeros(n * C) if acc is None else acc,
        "y": torch.arange(n, dtype=torch.int64)})


def probe_msg(x=None) -> Message:
    return Message("probe", meta={"step": 0}, tensors={"x": torch.rand(16, D) if x is None else x})


def run_stage(tmp_path, messages, *overrides):
    inbox, outbox = MemoryChannel(messages + [ctrl("stop")]), MemoryChannel(keep=True)
    worker = StageWorker(0, cfg_for(tmp_path, *overrides), Flow(inbox, outbox, lambda: False))
    worker.run()
    return worker, inbox, outbox.out


def weights_finite(trainer: LayerTrainer) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in trainer.layer.parameters())


@pytest.mark.parametrize("value", BAD)
def test_expect_rejects_a_float_tensor_with_nan_or_inf_and_names_it(value):
    msg = train_msg(0, neg=poisoned((5, D), value, at=(4, 7)))
    expect(msg, "pos", D)
    with pytest.raises(WireError, match="train message: tensor 'neg' holds NaN or Inf"):
        expect(msg, "neg", D)


@pytest.mark.parametrize("index", [0, 1, 4095, 4096, 99_999, 199_999])
@pytest.mark.parametrize("value", BAD)
def test_all_finite_finds_one_bad_entry_anywhere_in_a_large_tensor(index, value):
    t = torch.randn(200, 1000)
    assert all_finite(t) and all_finite(torch.empty(0, 1000))
    t.view(-1)[index] = value
    assert not all_finite(t)


def test_expect_accepts_int_labels_and_checks_float_rank_first():
    msg = eval_msg()
    y = expect(msg, "y", ndim=1)
    assert y.dtype == torch.int64
    assert expect(msg, "acc", rows=2 * C, ndim=1).dtype == torch.float32
    one_d = Message("probe", tensors={"x": torch.full((4,), math.nan)})
    with pytest.raises(WireError, match="shape"):
        expect(one_d, "x", D)


@pytest.mark.parametrize("name,dtype", [("pos", torch.float64), ("pos", torch.float16),
                                        ("pos", torch.uint8), ("y", torch.float32),
                                        ("y", torch.int32)])
def test_expect_rejects_a_dtype_the_wire_allows_but_the_roles_cannot_use(name, dtype):
    tensors = {"pos": torch.rand(5, D), "y": torch.arange(5)}
    tensors[name] = tensors[name].to(dtype)
    msg = Message("train", meta={}, tensors=tensors)
    with pytest.raises(WireError, match=f"tensor {name!r} is {dtype}"):
        expect(msg, name, D if name == "pos" else None, ndim=2 if name == "pos" else 1)


def test_stage_counts_every_non_finite_message_trains_on_the_good_ones_and_finishes(tmp_path):
    bad = [train_msg(10, pos=poisoned((5, D), v)) for v in BAD]
    bad += [train_msg(11, neg=poisoned((5, D), v, at=(2, 3))) for v in BAD]
    bad += [eval_msg(x=poisoned((2 * C, D), v)) for v in BAD]
    bad += [eval_msg(acc=poisoned((2 * C,), v)) for v in BAD]
    bad += [probe_msg(x=poisoned((16, D), v, at=(15, 0))) for v in BAD]
    bad += [train_msg(12, pos=torch.rand(5, D).double())]  # finite but not float32
    good = [train_msg(s) for s in range(4)]
    mixed = [m for pair in zip(bad, good * 4) for m in pair] + bad[len(good) * 4:]
    worker, inbox, out = run_stage(tmp_path, good[:1] + mixed + [eval_msg(), probe_msg()])

    assert inbox.rejected == len(bad)
    assert worker.trainer.version == len(good) * 4 + 1  # one per good train message
    assert worker.trainer.skipped_steps == 0
    assert weights_finite(worker.trainer)
    kinds = [m.kind for m in out]
    assert kinds.count("train") == len(good) * 4 + 1
    assert kinds.count("eval") == kinds.count("probe") == 1 and kinds[-1] == "ctrl"
    for m in out:
        assert all(bool(torch.isfinite(t).all()) for t in m.tensors.values()
                   if t.is_floating_point())
    stats = out[-1].meta["stages"][-1]
    assert stats["rejected"] == len(bad) and stats["skipped_steps"] == 0


def test_a_train_message_with_nan_head_rows_is_rejected_before_any_step(tmp_path):
    msg = train_msg(0)
    msg.tensors.update(neutral=poisoned((5, D), math.nan), y=torch.arange(5))
    worker, inbox, _ = run_stage(tmp_path, [msg])
    assert inbox.rejected == 1 and weights_finite(worker.trainer)
    assert worker.trainer.version == 0


def trainer(*overrides) -> LayerTrainer:
    # No normalization: the input's scale reaches the goodness, which then overflows.
    cfg = load_config(None, [("model.layers", f"{D},6,4"), ("model.normalization", "none"),
                             *overrides])
    return LayerTrainer(0, cfg)


def state_of(tr: LayerTrainer) -> dict:
    return {k: v.clone() for k, v in tr.layer.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("scale", [1e30, 1e15])  # loss overflows / loss finite, grads huge
def test_a_step_with_overflowing_loss_or_gradients_is_not_taken(optimizer, scale):
    tr = trainer(("train.optimizer", optimizer), ("train.peer_lambda", "0.03"))
    tr.train_step(torch.rand(5, D), torch.rand(5, D), 0.0)  # some optimizer state first
    before, opt_before = state_of(tr), repr(tr.opt.state_dict())
    peer = tr.peer_mean.clone()

    _, _, stats = tr.train_step(torch.full((5, D), scale), torch.full((5, D), -scale), 0.1)

    assert tr.skipped_steps == 1 and tr.version == 1
    assert isinstance(stats["loss"], float)
    assert scale < 1e20 or not math.isfinite(stats["loss"])
    after = state_of(tr)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert repr(tr.opt.state_dict()) == opt_before
    assert torch.equal(tr.peer_mean, peer)
    assert weights_finite(tr)

    tr.train_step(torch.rand(5, D), torch.rand(5, D), 0.2)  # and training goes on
    assert tr.version == 2 and tr.skipped_steps == 1 and weights_finite(tr)


@pytest.mark.parametrize("scale", [1.0, 1e6, 1e9, 1e12, 1e17, 1e19, 1e25])
def test_the_bound_on_the_weight_gradient_decides_as_the_exact_check_does(scale):
    """The cheap check trusts a bound on grad_w's entries only while it proves the summed
    squares finite; otherwise it defers to the exact sum. So both agree at every scale,
    including those (1e12..1e17 here) where the bound is too loose to decide."""
    from pipeline.ff_grad import layer_step_grads
    from pipeline.layer_trainer import _grads_finite, _sum_sq_finite
    torch.manual_seed(0)
    w, b = torch.randn(6, D) * scale, torch.zeros(6)
    s = layer_step_grads(w, b, torch.rand(5, D), torch.rand(5, D), normalization="rms",
                         compute_dtype=None, goodness="sum", loss="ff", theta=6.0, alpha=1.0)
    bound = float(s.grad_w_bound)  # not finite (overflowed norms): the exact check decides
    assert not math.isfinite(bound) or float(s.grad_w.abs().max()) <= bound
    assert _grads_finite(s) == _sum_sq_finite([s.grad_w, s.grad_b])
