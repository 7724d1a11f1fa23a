"""A `local` hop whose tensor bytes stay on the device: stage k -> stage k+1 with both
stages on CUDA devices of this machine.

`ShmChannel` copies every tensor into host shared memory and back out: for two stages on
GPUs that is a device->host and a host->device copy per message, and a synchronisation
with the host each way. Here each ring slot has a twin in device memory (allocated on
the receiver's device by the launcher, handed to both children through torch's CUDA IPC
when they are spawned). The sender copies each device tensor into the twin (device to
device, or device to peer device) and waits for its stream before it posts the slot; the
host slot carries only the prefix and the msgpack header, with the prefix's buffer count
marked DEVICE. The receiver validates the header as always, then clones each tensor out
of the twin on its device before handing the slot back.

Tensors not on a device (a message built on the host) take the host path unchanged, so
one hop can carry both. `device="cpu"` gives a twin in host shared memory: the same code
path, which is how it is tested on machines without a GPU.

The sender counts the tensor bytes each path carried (`device_bytes`, `host_bytes`):
the stage reports the first in its final stats, the "no host copy on the hop" check.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.transport.local import ShmChannel, _layout
from pipeline.wire import DTYPES, MAX_TENSORS, Message, WireError, encode_header, \
    message_from, unpack_header

DEVICE = 1 << 63  # marks the buffer count of a slot whose tensors are in the device twin


class DeviceRingChannel(ShmChannel):
    def __init__(self, ctx, slots: int, message_bytes: int, max_bytes: int,
                 generations: int = 1, device: str = "cuda"):
        super().__init__(ctx, slots, message_bytes, max_bytes, generations)
        self.device = torch.device(device)
        twin = lambda: torch.empty(slots * self.slot_bytes, dtype=torch.uint8,  # noqa: E731
                                   device=self.device)
        self.twins = [twin().share_memory_() if self.device.type == "cpu" else twin()
                      for _ in range(generations)]

    def __getstate__(self):
        return {**super().__getstate__(), "twins": self.twins, "device": self.device}

    def _init_local(self) -> None:
        super()._init_local()
        self.host_bytes = 0  # tensor bytes this end sent through host memory

    # ---- sender ----------------------------------------------------------------------
    def send(self, msg: Message, timeout: float | None = None) -> bool:
        if not any(t.device.type == self.device.type for t in msg.tensors.values()):
            ok = super().send(msg, timeout)
            self.host_bytes += msg.nbytes() if ok else 0
            return ok
        if int(self.counters[0]) != self.g:
            self._use(int(self.counters[0]))
        self._next_seq = max(self._next_seq, int(self.counters[1]))
        header = encode_header(self.stamp(msg))
        tensors = list(msg.tensors.values())
        sizes = [t.numel() * t.element_size() for t in tensors]
        header_at, offsets, used = _layout(len(header), sizes)
        if used > self.slot_bytes or len(header) > self.slot_bytes:
            raise ValueError(f"a {used}-byte message does not fit a {self.slot_bytes}-byte "
                             f"device slot (runtime.protocol.max_message_bytes is too small)")
        if not self.free.acquire(True, timeout):
            self._next_seq -= 1
            self.sent -= 1
            return False
        base = self._w % self.slots * self.slot_bytes
        self._w += 1
        twin = self.twins[self.g]
        for t, n, at in zip(tensors, sizes, offsets):
            if n:
                twin[base + at: base + at + n].view(t.dtype).view(t.shape).copy_(t)
        if self.device.type == "cuda":  # the copies must land before the slot is posted
            torch.cuda.current_stream(self.device).synchronize()
        area = self.arena[base: base + self.slot_bytes]
        prefix = area[: 16 + 8 * len(sizes)].view(np.uint64)
        prefix[:2] = (len(header), len(sizes) | DEVICE)
        prefix[2:] = sizes
        area[header_at: header_at + len(header)] = np.frombuffer(header, np.uint8)
        self.full.release()
        self.counters[1] = self._next_seq
        self.device_bytes += sum(sizes)
        return True

    # ---- receiver --------------------------------------------------------------------
    def _decode(self, area: np.ndarray, base: int | None = None) -> Message:
        count = int(area[8:16].view(np.uint64)[0]) if len(area) >= 16 else 0
        if base is None or not count & DEVICE:
            return super()._decode(area, base)
        count &= ~DEVICE
        header_len = int(area[:8].view(np.uint64)[0])
        if count > MAX_TENSORS or 16 + 8 * count > len(area):
            raise WireError(f"device slot announces {count} buffers")
        sizes = [int(n) for n in area[16: 16 + 8 * count].view(np.uint64)]
        header_at, offsets, used = _layout(header_len, sizes)
        if used > len(area):
            raise WireError("device slot lengths exceed the slot")
        header = unpack_header(area[header_at: header_at + header_len].tobytes(),
                               self.max_bytes)
        specs = header["tensors"]
        if len(specs) != count:
            raise WireError(f"{count} device buffers for {len(specs)} tensor specs")
        twin, tensors = self.twins[self.g], []
        for spec, n, at in zip(specs, sizes, offsets):
            dtype = DTYPES[spec["dtype"]]
            if math.prod(spec["shape"]) * dtype.itemsize != n:
                raise WireError(f"tensor {spec['name']!r}: {n} bytes for shape {spec['shape']}")
            view = twin[base + at: base + at + n]
            # Copy out (on the device): the slot is the sender's again once we return.
            tensors.append(view.view(dtype).view(spec["shape"]).clone() if n else
                           torch.empty(spec["shape"], dtype=dtype, device=self.device))
        return message_from(header, tensors)
