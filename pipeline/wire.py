"""Messages and the wire format: one place, used by every transport that moves bytes.

A message is a msgpack header followed by one raw little-endian buffer per tensor:

    header = {"v": 1, "kind": "train", "seq": 17, "versions": [412, 409],
              "meta": {"step": 420}, "tensors": [{"name": "pos", "dtype": "float32",
                                                   "shape": [100, 784]}, ...]}
    frames = [msgpack(header), bytes(pos), bytes(neg), ...]

`decode` trusts nothing: wire version, kind and dtype allow-lists, shapes, exact byte
lengths and a size cap are all checked before a tensor is built, and msgpack itself is
run with container-size limits. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field

import msgpack
import torch

from pipeline.errors import UserError

WIRE_VERSION = 1
KINDS = ("train", "eval", "probe", "ctrl", "score", "scores")  # what each must carry: runtime/protocol.py
DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
    "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_TENSORS = 16
MAX_NDIM = 8
HEADER_CAP = 1 << 20  # a header is a few hundred bytes; 1 MiB is generous
assert sys.byteorder == "little", "the wire format is little-endian; big-endian hosts unsupported"


class WireError(UserError):
    """A message that breaks the wire contract. Receivers log it, count it, keep running."""


@dataclass(slots=True)
class Message:
    kind: str
    versions: list[int] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    seq: int = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def ctrl(op: str, **meta) -> Message:
    return Message(kind="ctrl", meta={"op": op, **meta})


def header_of(msg: Message) -> dict:
    specs = []
    for name, t in msg.tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} is not on the wire allow-list")
        specs.append({"name": name, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)})
    return {"v": WIRE_VERSION, "kind": msg.kind, "seq": msg.seq, "versions": msg.versions,
            "meta": msg.meta, "tensors": specs}


def tensor_buffer(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (one copy if it is not contiguous or not on CPU)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    # Viewing as uint8 works for every dtype, bfloat16 included (numpy has no bfloat16).
    return memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def encode_header(msg: Message) -> bytes:
    """The header frame alone (a transport that moves tensors itself needs no buffers)."""
    return msgpack.packb(header_of(msg), use_bin_type=True)


def encode(msg: Message) -> list:
    """[header bytes, buffer, buffer, ...]; buffers share memory with the tensors."""
    return [encode_header(msg)] + [tensor_buffer(t) for t in msg.tensors.values()]


def unpack_header(raw, max_bytes: int) -> dict:
    if len(raw) > HEADER_CAP:
        raise WireError(f"header of {len(raw)} bytes exceeds the {HEADER_CAP}-byte cap")
    try:
        header = msgpack.unpackb(
            bytes(raw), raw=False, strict_map_key=True, max_str_len=1 << 16,
            max_bin_len=0, max_array_len=1 << 12, max_map_len=256, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types; all mean "not our header"
        raise WireError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    if header.get("v") != WIRE_VERSION:
        raise WireError(f"wire version {header.get('v')!r}, expected {WIRE_VERSION}")
    if header.get("kind") not in KINDS:
        raise WireError(f"kind {header.get('kind')!r} not in {KINDS}")
    seq, versions, meta = header.get("seq"), header.get("versions"), header.get("meta")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise WireError("seq must be a non-negative int")
    if not isinstance(versions, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in versions):
        raise WireError("versions must be a list of non-negative ints")
    if not isinstance(meta, dict):
        raise WireError("meta must be a map")
    specs = header.get("tensors")
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise WireError(f"tensors must be a list of at most {MAX_TENSORS} specs")
    total = 0
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise WireError("tensor spec must be a map with a string name")
        if spec.get("dtype") not in DTYPES:
            raise WireError(f"dtype {spec.get('dtype')!r} not on the allow-list")
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise WireError(f"bad shape {shape!r} for tensor {spec['name']!r}")
        spec["nbytes"] = math.prod(shape) * DTYPES[spec["dtype"]].itemsize
        total += spec["nbytes"]
        if total > max_bytes:
            raise WireError(f"message of over {total} bytes exceeds the cap of {max_bytes}")
    if len({s["name"] for s in specs}) != len(specs):
        raise WireError("duplicate tensor names")
    return header


def tensor_from_buffer(buf, spec: dict) -> torch.Tensor:
    if len(buf) != spec["nbytes"]:
        raise WireError(f"tensor {spec['name']!r}: {len(buf)} bytes, expected "
                        f"{spec['nbytes']} for {spec['dtype']}{spec['shape']}")
    dtype = DTYPES[spec["dtype"]]
    if spec["nbytes"] == 0:
        return torch.empty(spec["shape"], dtype=dtype)
    with warnings.catch_warnings():
        # zmq frames are read-only; receivers never write into an input tensor.
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(buf, dtype=torch.uint8)
    return flat.view(dtype).view(spec["shape"])


def decode(frames: list, max_bytes: int) -> Message:
    """Validate and rebuild a message; tensors view the frames' memory (no copy)."""
    if not frames:
        raise WireError("empty message")
    header = unpack_header(frames[0], max_bytes)
    specs = header["tensors"]
    if len(frames) != 1 + len(specs):
        raise WireError(f"{len(frames) - 1} buffers for {len(specs)} tensor specs")
    return message_from(header, [tensor_from_buffer(buf, s) for s, buf in zip(specs, frames[1:])])


def message_from(header: dict, tensors: list[torch.Tensor]) -> Message:
    """A message from a validated header and its tensors, in the header's order."""
    return Message(kind=header["kind"], versions=header["versions"], meta=header["meta"],
                   tensors={s["name"]: t for s, t in zip(header["tensors"], tensors)},
                   seq=header["seq"])
