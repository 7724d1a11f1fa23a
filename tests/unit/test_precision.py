"""Lower-precision matmuls: master weights stay float32, predictions agree with float32,
`auto` follows the hardware, the bfloat16 wire round-trips, fp16's loss scale backs off;
the SymBa loss is the pairwise formula."""

import pytest
import torch
import torch.nn.functional as F

from pipeline import precision
from pipeline.config import load_config
from pipeline.ff import predict, symba_loss
from pipeline.layer_trainer import LayerTrainer
from pipeline.runtime.protocol import expect
from pipeline.wire import Message, decode, encode

pytestmark = pytest.mark.timeout(60)


def config(*extra):
    return load_config(None, [("model.layers", "20,64,64"), ("train.lr", "0.01"), *extra])


def data(n=64, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_explicit_precisions_resolve_to_their_dtypes_on_any_device():
    assert precision.resolve("fp32") is torch.float32
    assert precision.resolve("bf16") is torch.bfloat16
    assert precision.resolve("fp16") is torch.float16


@pytest.mark.parametrize("flags, fast", [
    ("flags : fpu sse avx2 fma", False),
    ("flags : fpu avx2 avx512f avx512_bf16", True),
    ("flags : fpu amx_tile amx_bf16", True),
    ("Features : fp asimd bf16 i8mm", True),      # aarch64 spells it in Features
])
def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path, flags, fast):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor : 0\n{flags}\n")
    assert precision.cpu_has_fast_bf16(str(info)) is fast


def test_auto_is_bf16_exactly_where_the_cpu_has_fast_bf16():
    expected = torch.bfloat16 if precision.cpu_has_fast_bf16() else torch.float32
    assert precision.resolve("auto", "cpu") is expected


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_master_weights_and_optimizer_state_stay_float32(prec):
    tr = LayerTrainer(0, config(("train.precision", prec)))
    pos, neg = data()
    for _ in range(5):
        out_pos, _, stats = tr.train_step(pos, neg, 0.0)
    assert tr.version == 5
    for p in tr.layer.parameters():
        assert p.dtype is torch.float32
    for state in tr.opt.state.values():
        assert all(v.dtype is torch.float32 for v in state.values() if v.dim())
    assert out_pos.dtype is torch.float32  # the float32 wire: normalized in float32


def test_bf16_predicts_what_fp32_predicts_on_a_trained_model():
    cfg = config(("train.precision", "fp32"))
    trainers = [LayerTrainer(k, cfg) for k in range(2)]
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 20, generator=g) * 3
    for step in range(150):
        y = torch.randint(0, 4, (32,), generator=g)
        x = centers[y] + torch.randn(32, 20, generator=g)
        pos, neg = x.clone(), x.clone()
        pos[:, :4], neg[:, :4] = F.one_hot(y, 4) * 4.0, F.one_hot((y + 1) % 4, 4) * 4.0
        for tr in trainers:
            pos, neg, _ = tr.train_step(pos, neg, step / 150)
    x = centers[torch.arange(200) % 4] + torch.randn(200, 20, generator=g)
    layers = [tr.layer for tr in trainers]
    want = predict(layers, x, 4, strength=4.0, skip=0)
    for layer in layers:
        layer.compute_dtype = torch.bfloat16
    got = predict(layers, x, 4, strength=4.0, skip=0)
    # bfloat16 keeps 8 significant bits: a few near-ties may flip, no more (stated: 2 %).
    assert (got == want).float().mean() >= 0.98


def test_bf16_wire_round_trips_and_stages_accept_it():
    t = torch.randn(3, 5).to(torch.bfloat16)
    msg = decode(encode(Message(kind="train", meta={"step": 0, "total": 1, "n": 3},
                                tensors={"pos": t})), max_bytes=1 << 20)
    assert msg.tensors["pos"].dtype is torch.bfloat16
    assert torch.equal(msg.tensors["pos"], t)
    assert expect(msg, "pos", 5, rows=3) is msg.tensors["pos"]


def test_bf16_wire_rounds_what_a_layer_sends_and_nothing_else():
    pos, neg = data()
    plain = LayerTrainer(0, config())
    wired = LayerTrainer(0, config(("pipeline.wire_dtype", "bfloat16")))
    a, _, sa = plain.train_step(pos, neg, 0.0)
    b, _, sb = wired.train_step(pos, neg, 0.0)
    assert b.dtype is torch.bfloat16 and sa == sb   # same step, only the output rounded
    assert torch.equal(a.to(torch.bfloat16), b)


def test_a_wrong_activation_dtype_is_still_refused():
    msg = Message(kind="train", tensors={"pos": torch.zeros(2, 3, dtype=torch.float16)})
    with pytest.raises(Exception, match="float16"):
        expect(msg, "pos", 3)


def test_fp16_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    tr = LayerTrainer(0, config(("train.precision", "fp16")))
    start = tr.loss_scale
    tr._rescale(overflow=True)
    assert tr.loss_scale == start / 2
    for _ in range(1000):
        tr._rescale(overflow=False)
    assert tr.loss_scale == start


def test_symba_is_softplus_of_the_scaled_pairwise_gap():
    g_pos, g_neg = torch.tensor([5.0, 1.0]), torch.tensor([1.0, 4.0])
    want = torch.log1p(torch.exp(-0.5 * (g_pos - g_neg))).mean()
    assert torch.allclose(symba_loss(g_pos, g_neg, 0.5), want)


def test_symba_steps_raise_positive_goodness_above_negative():
    tr = LayerTrainer(0, config(("train.loss", "symba")))
    assert tr.alpha == pytest.approx(4.0 / 64)  # default: 4 / theta, theta = width
    pos, neg = data()
    first = None
    for _ in range(30):
        _, _, stats = tr.train_step(pos, neg, 0.0)
        first = first or stats
    assert stats["g_pos"] - stats["g_neg"] > first["g_pos"] - first["g_neg"]
    assert stats["loss"] < first["loss"]
