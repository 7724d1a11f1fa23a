"""Message helpers shared by the wire and channel tests."""

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
