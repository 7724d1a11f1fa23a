"""pipeline.optimizers: torch's Adam and SGD, bit for bit, without importing torch._dynamo
while it is not imported (and torch's own wrapped methods once it is)."""

import subprocess
import sys

import pytest
import torch

from pipeline import optimizers

pytestmark = pytest.mark.timeout(60)

CASES = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
]


def train(cls, kw: dict, fused: bool, steps: int = 25):
    """`steps` updates of a 30x20 weight and a bias on fixed gradients, with a
    zero_grad each step and a state_dict round-trip half way; (params, state_dict)."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(30, 20, generator=g))
    b = torch.nn.Parameter(torch.zeros(30))
    opt = cls([w, b], fused=fused, **kw)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        w.grad = torch.randn(30, 20, generator=g)
        b.grad = torch.randn(30, generator=g)
        opt.step()
        if step == steps // 2:
            opt.load_state_dict(opt.state_dict())
    return [w.detach().clone(), b.detach().clone()], opt.state_dict()


def assert_same_run(ours, theirs):
    (p1, s1), (p2, s2) = ours, theirs
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
    assert s1["param_groups"] == s2["param_groups"]
    for i in s2["state"]:
        for key, value in s2["state"][i].items():
            assert torch.equal(s1["state"][i][key], value), key


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name,kw", CASES)
def test_same_parameters_and_state_as_torch_optim(name, kw, fused):
    assert_same_run(train(getattr(optimizers, name), kw, fused),
                    train(getattr(torch.optim, name), kw, fused))


@pytest.mark.parametrize("name,kw", CASES[::2])
def test_once_dynamo_is_imported_torch_wrapped_methods_run(name, kw, monkeypatch):
    calls = []
    for method in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        wrapped = getattr(torch.optim.Optimizer, method)
        monkeypatch.setattr(torch.optim.Optimizer, method,
                            lambda *a, _w=wrapped, _m=method, **k: (calls.append(_m),
                                                                   _w(*a, **k))[1])
    monkeypatch.setattr(optimizers, "dynamo_imported", lambda: True)
    ours = train(getattr(optimizers, name), kw, fused=True)
    assert {"add_param_group", "zero_grad", "state_dict", "load_state_dict"} <= set(calls)
    assert_same_run(ours, train(getattr(torch.optim, name), kw, fused=True))


def test_step_hooks_run_once_per_step():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = optimizers.Adam([w], lr=0.1)
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # torch hooks Adam.step too
    pre, post = [], []
    opt.register_step_pre_hook(lambda *a: pre.append(1))
    opt.register_step_post_hook(lambda *a: post.append(1))
    for _ in range(3):
        w.grad = torch.ones(3)
        opt.step()
    assert (len(pre), len(post)) == (3, 3)
    assert isinstance(opt, torch.optim.Adam)


def test_a_layer_trainer_builds_steps_and_saves_without_importing_dynamo():
    """What a stage process does from start to stop, in a fresh interpreter (this test
    process may have imported dynamo already); plain torch.optim.Adam does import it."""
    code = (
        "import sys, torch\n"
        "from pipeline.config import load_config\n"
        "from pipeline.layer_trainer import LayerTrainer\n"
        "cfg = load_config(None, [('model.layers', '8,6,4')])\n"
        "for opt in ('adam', 'sgd'):\n"
        "    cfg.train.optimizer = opt\n"
        "    t = LayerTrainer(0, cfg)\n"
        "    t.train_step(torch.rand(5, 8), torch.rand(5, 8), 0.0)\n"
        "    t.load_state_dict(t.state_dict())\n"
        "print('ours', 'torch._dynamo' in sys.modules)\n"
        "p = torch.nn.Parameter(torch.zeros(2))\n"
        "torch.optim.Adam([p])\n"
        "print('torch', 'torch._dynamo' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=50)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["ours False", "torch True"]
