"""The static-buffer train step (`pipeline.step_graph`) against the eager step.

On CUDA it is captured as a CUDA graph (`tests/integration/test_cuda.py`); here, with
`--train.step_graph on`, the same step runs eagerly on the CPU: same buffers, the finite
check and step skip decided on the device, the learning rate read from a tensor.
"""

import copy

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.layer_trainer import LayerTrainer

pytestmark = pytest.mark.timeout(60)

B = 8


def trainer(mode: str, *extra) -> LayerTrainer:
    cfg = load_config(None, [("model.layers", "20,30,10"), ("train.batch_size", str(B)),
                             ("train.precision", "fp32"), ("train.lr", "0.01"),
                             ("train.lr_schedule", "linear-decay"),
                             ("train.step_graph", mode), *extra])
    return LayerTrainer(0, cfg)


def batches(n_steps: int, odd_every: int = 7, bad_at: int = 10):
    """Full batches, a smaller one every `odd_every` steps (the eager step takes it), and
    one with an infinite input (a step neither path may take)."""
    g = torch.Generator().manual_seed(0)
    for i in range(n_steps):
        n = B if i % odd_every else B - 3
        pos, neg = torch.randn(n, 20, generator=g), torch.randn(n, 20, generator=g)
        if i == bad_at:
            pos[0, 0] = float("inf")
        yield i / n_steps, pos, neg


@pytest.mark.parametrize("peer", ["0", "0.03"])
def test_graph_step_takes_the_eager_steps_and_skips_the_same_one(peer):
    eager, graphed = trainer("off", ("train.peer_lambda", peer)), trainer(
        "on", ("train.peer_lambda", peer))
    assert graphed.use_graph and not eager.use_graph
    for progress, pos, neg in batches(40):
        a_pos, a_neg, a_stats = eager.train_step(pos, neg, progress)
        b_pos, b_neg, b_stats = graphed.train_step(pos, neg, progress)
        for a, b in ((a_pos, b_pos), (a_neg, b_neg)):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, equal_nan=True)
        for key in a_stats:
            assert b_stats[key] == pytest.approx(a_stats[key], rel=1e-5, nan_ok=True)
    assert graphed.graph is not None  # the full batches did go through the graph step
    assert (graphed.version, graphed.skipped_steps) == (eager.version, eager.skipped_steps)
    assert eager.skipped_steps == 1
    for a, b in zip(eager.layer.parameters(), graphed.layer.parameters()):
        # the graph's Adam reads lr from a float32 tensor, the eager one as a double
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(graphed.peer_mean, eager.peer_mean, atol=1e-6, rtol=1e-5)
    step = [s["step"] for s in graphed.opt.state.values()]
    assert all(int(s) == eager.version for s in step)  # the skipped step did not count


def test_a_skipped_graph_step_moves_nothing():
    tr = trainer("on", ("train.peer_lambda", "0.03"))
    for progress, pos, neg in batches(3, odd_every=100, bad_at=-1):
        tr.train_step(pos, neg, progress)
    before = {k: v.clone() for k, v in tr.state_dict()["layer"].items()}
    moments = [s["exp_avg"].clone() for s in tr.opt.state.values()]
    peer, version = tr.peer_mean.clone(), tr.version
    pos, neg = torch.randn(B, 20), torch.randn(B, 20)
    neg[2, 3] = float("nan")
    _, _, stats = tr.train_step(pos, neg, 0.5)
    assert stats["loss"] != stats["loss"]  # nan, reported as computed
    assert (tr.version, tr.skipped_steps) == (version, 1)
    for k, v in tr.state_dict()["layer"].items():
        assert torch.equal(v, before[k])
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, tr.opt.state.values()))
    assert torch.equal(tr.peer_mean, peer)


def test_outputs_are_the_callers_to_keep():
    tr = trainer("on")
    runs = list(batches(4, odd_every=100, bad_at=-1))
    first = tr.train_step(runs[0][1], runs[0][2], 0.0)
    kept = first[0].clone()
    for progress, pos, neg in runs[1:]:
        tr.train_step(pos, neg, progress)
    assert torch.equal(first[0], kept)  # the next steps wrote their own buffers, not these


def test_checkpoint_of_a_graph_trainer_resumes_eagerly_and_back():
    graphed, eager = trainer("on"), trainer("off")
    steps = list(batches(12, odd_every=100, bad_at=-1))
    for progress, pos, neg in steps[:6]:
        graphed.train_step(pos, neg, progress)
    state = graphed.state_dict()
    group = state["opt"]["param_groups"][0]
    assert isinstance(group["lr"], float) and group["capturable"] is False
    eager.load_state_dict(copy.deepcopy(state))  # as from a file: no shared tensors
    graphed.load_state_dict(copy.deepcopy(eager.state_dict()))
    assert graphed.graph is None  # new state: captured anew at the next full batch
    for progress, pos, neg in steps[6:]:
        a = eager.train_step(pos, neg, progress)[0]
        b = graphed.train_step(pos, neg, progress)[0]
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert graphed.version == eager.version == 12


@pytest.mark.parametrize("extra, why", [
    (("train.precision", "fp16"), "float16"),
    (("train.dropout", "0.1"), "dropout"),
    (("train.optimizer", "sgd"), "sgd"),
])
def test_on_is_refused_where_a_graph_cannot_step(extra, why):
    with pytest.raises(ConfigError, match=f"step_graph.*{why}"):
        trainer("on", extra)
    assert not trainer("auto", extra).use_graph


def test_auto_is_eager_on_the_cpu():
    assert not trainer("auto").use_graph


def test_a_failed_capture_falls_back_to_the_eager_step(monkeypatch, caplog):
    from pipeline import step_graph

    def refuse(self):
        raise step_graph.CaptureFailed("operation not permitted when stream is capturing")

    monkeypatch.setattr(step_graph.StepGraph, "_run", refuse)
    eager, graphed = trainer("off"), trainer("on")
    for progress, pos, neg in batches(5, odd_every=100, bad_at=-1):
        a = eager.train_step(pos, neg, progress)[0]
        b = graphed.train_step(pos, neg, progress)[0]
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert not graphed.use_graph and graphed.graph is None and graphed.version == 5
    group = graphed.opt.param_groups[0]
    assert isinstance(group["lr"], float) and group["capturable"] is False
    assert sum("steps eagerly" in r.getMessage() for r in caplog.records) == 1


def test_the_graph_body_never_reads_a_value_on_the_host():
    """What would break a CUDA-graph capture: a tensor value read on the host (`.item()`,
    `bool(t)`, `.tolist()`: all dispatch to `_local_scalar_dense`), here recorded on the
    CPU twin of the body, with peer normalization on."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.reads = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense,
                                       torch.ops.aten.is_nonzero, torch.ops.aten.item):
                self.reads.append(str(func))
            return func(*args, **(kwargs or {}))

    tr = trainer("on", ("train.peer_lambda", "0.03"))
    for progress, pos, neg in batches(3, odd_every=100, bad_at=-1):
        tr.train_step(pos, neg, progress)
    with HostReads() as mode:
        tr.graph._body()
    assert mode.reads == []
    with HostReads() as mode:  # the check itself sees the eager step's host reads
        tr.grads(pos, neg).loss.item()
    assert mode.reads
