"""Message helpers shared by the wire and channel tests, and hostile input for the
tests that attack a live stage."""

import math
import random

import msgpack
import torch

from pipeline.wire import Message, encode

CAP = 1 << 20
G = torch.Generator().manual_seed(0)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, so NaN payloads and -0.0 compare exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def random_bits(dtype: torch.dtype, shape) -> torch.Tensor:
    """Every bit pattern is fair game (NaNs, infinities, subnormals) for float types."""
    n = int(torch.tensor(shape).prod()) if shape else 1
    raw = torch.randint(0, 256, (n * torch.empty(0, dtype=dtype).element_size(),),
                        dtype=torch.uint8, generator=G)
    return raw.view(dtype).reshape(shape)


def good_parts():
    """(header dict, buffers) of a valid message, as the encoder itself writes them."""
    frames = encode(Message(kind="train", versions=[3], meta={"step": 1},
                            tensors={"x": torch.ones(2, 3)}))
    return msgpack.unpackb(frames[0]), [bytes(b) for b in frames[1:]]


def frames_with(**changes):
    header, buffers = good_parts()
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True), *buffers]


# ---- hostile input: every kind of bad message a peer on the network could send --------

def _train(width: int, rows: int = 4, versions=(0,), **over) -> Message:
    meta = {"step": 1, "total": 10, "n": rows, **over.pop("meta", {})}
    tensors = over.pop("tensors", None) or {"pos": torch.rand(rows, width),
                                            "neg": torch.rand(rows, width)}
    return Message(kind=over.pop("kind", "train"), versions=list(versions), meta=meta,
                   tensors=tensors)


def _frames(msg: Message, rng) -> list[bytes]:
    msg.seq = rng.randrange(1 << 40)  # the sender picks it: it must not fake lost messages
    return [bytes(f) for f in encode(msg)]


def _raw_header(rng, **over) -> list[bytes]:
    h = {"v": 1, "kind": "train", "seq": rng.randrange(1 << 20), "versions": [0],
         "meta": {"step": 1, "total": 10, "n": 4},
         "tensors": [{"name": "pos", "dtype": "float32", "shape": [4, 4]}]}
    h.update(over)
    return [msgpack.packb(h, use_bin_type=True), bytes(64)]


def _nested(depth: int) -> bytes:
    """A msgpack header whose meta nests `depth` arrays deep (built as bytes: packing
    it would hit the packer's own limit first)."""
    head = msgpack.packb({"v": 1, "kind": "ctrl", "seq": 0, "versions": [],
                          "meta": {"op": "epoch", "x": 0}, "tensors": []})
    return head.replace(b"\xa1x\x00", b"\xa1x" + b"\x91" * depth + b"\x00")


def _poisoned(rng, width: int) -> torch.Tensor:
    t = torch.rand(4, width)
    t[rng.randrange(4), rng.randrange(width)] = rng.choice([math.nan, math.inf, -math.inf])
    return t


def hostile_kinds(width: int) -> dict:
    """name -> fn(rng) -> frames, for a stage whose input is `width` wide and that has
    one upstream stage (one version stamp per message). None is valid."""
    w = width
    return {
        "random bytes": lambda r: [r.randbytes(r.randrange(1, 300))
                                   for _ in range(r.randrange(1, 4))],
        "truncated header": lambda r: (lambda f: [f[0][:r.randrange(len(f[0]))], *f[1:]])(
            _frames(_train(w), r)),
        "lying length": lambda r: (lambda f: [f[0], f[1][:-r.randrange(1, 8)], f[2]])(
            _frames(_train(w), r)),
        "longer than said": lambda r: (lambda f: [f[0], f[1] + b"\0" * 4, f[2]])(
            _frames(_train(w), r)),
        "disallowed dtype": lambda r: _raw_header(r, tensors=[{"name": "pos", "shape": [4],
            "dtype": r.choice(["object", "complex64", "float128", "str", None])}]),
        "huge shape": lambda r: _raw_header(r, tensors=[{"name": "pos", "dtype": "float32",
            "shape": r.choice([[1 << 40, w], [1 << 31, 1 << 31], [-4, w], [4] * 9])}]),
        "wrong wire version": lambda r: _raw_header(r, v=r.choice([0, 2, "1", None])),
        "unknown kind": lambda r: _raw_header(r, kind=r.choice(["exec", "", 7])),
        "too many frames": lambda r: [_frames(_train(w), r)[0]] + [b"\0" * 16] * 40,
        "bad meta": lambda r: _frames(_train(w, meta=r.choice([
            {"step": "1"}, {"step": 10}, {"step": -1}, {"n": True}, {"total": None}])), r),
        "wrong width": lambda r: _frames(_train(w + r.choice([-1, 1, 37])), r),
        "wrong dtype": lambda r: _frames(_train(w, tensors={
            "pos": torch.rand(4, w).double(), "neg": torch.rand(4, w).double()}), r),
        "missing tensor": lambda r: _frames(_train(w, tensors={"pos": torch.rand(4, w)}), r),
        "unknown ctrl op": lambda r: _frames(Message("ctrl", meta={
            "op": r.choice(["exec", "shutdown", "", 3])}), r),
        "deep nesting": lambda r: [_nested(r.choice([2000, 100_000]))],
        "nested meta, bad tensors": lambda r: _frames(_train(w + 1, meta={"x": [[[[[[1]]]]]]}),
                                                      r),
        "wrong stamp count": lambda r: _frames(_train(w, versions=r.choice([[], [1, 2, 3]])), r),
        "NaN or Inf": lambda r: _frames(_train(w, tensors={
            "pos": _poisoned(r, w), "neg": torch.rand(4, w)}), r),
        "NaN eval": lambda r: _frames(Message("eval", versions=[0], meta={
            "eval_id": 0, "chunk": 0, "n_chunks": 1, "step": 0, "final": False}, tensors={
            "x": _poisoned(r, w), "acc": torch.zeros(4), "y": torch.zeros(4, dtype=torch.int64)}),
            r),
        "flat probe": lambda r: _frames(Message("probe", versions=[0], meta={"step": 0},
                                                tensors={"x": torch.rand(w)}), r),
    }


def hostile_messages(n: int, width: int, seed: int = 0) -> tuple[list[list[bytes]], dict]:
    """n bad messages drawn from every kind above (seeded); also how many of each."""
    rng = random.Random(seed)
    kinds = hostile_kinds(width)
    names = sorted(kinds)
    out, counts = [], dict.fromkeys(names, 0)
    for i in range(n):
        name = names[i % len(names)] if i < len(names) else rng.choice(names)
        out.append(kinds[name](rng))
        counts[name] += 1
    return out, counts
