"""`local` transport: processes on one machine, tensors through a shared-memory ring.

The parent allocates, per hop, `slots` fixed-size buffers in shared memory before it
spawns the children. A sender takes a free slot (blocking when all are in flight: that is
the backpressure), copies each tensor's bytes into it and queues `(slot, header)`; the
receiver decodes the header with the same codec as the network transports, copies the
tensors out and hands the slot back. One memcpy each way, no pickling of tensors, no
page faults after warm-up. A message larger than a slot (not expected with the sizes the
launcher computes) goes through the queue as plain bytes instead, and is counted.
"""

from __future__ import annotations

import queue as queue_mod

import numpy as np
import torch

from pipeline.transport import Channel
from pipeline.wire import WireError, decode, encode, Message

ALIGN = 64


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class ShmChannel(Channel):
    """One hop of the local transport; picklable to spawned children."""

    def __init__(self, ctx, slots: int, slot_bytes: int, max_bytes: int):
        super().__init__()
        self.slot_bytes = _aligned(slot_bytes)
        self.slots = slots
        self.max_bytes = max_bytes
        self.buf = torch.empty(slots * self.slot_bytes, dtype=torch.uint8).share_memory_()
        self._np = None
        self.full = ctx.Queue()
        self.free = ctx.Queue()
        for i in range(slots):
            self.free.put(i)
        self.oversize = 0

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("slot_bytes", "slots", "max_bytes", "buf", "full", "free")}

    def __setstate__(self, state):
        Channel.__init__(self)
        for k, v in state.items():
            setattr(self, k, v)
        self.oversize = 0
        self._np = None

    @property
    def arena(self) -> np.ndarray:
        # numpy's copy is a plain memcpy; torch's uint8 copy_ was slower on this machine.
        if self._np is None:
            self._np = self.buf.numpy()
        return self._np

    def send(self, msg: Message, timeout: float | None = None) -> bool:
        frames = encode(self.stamp(msg))
        header, buffers = frames[0], frames[1:]
        try:
            slot = self.free.get(timeout=timeout)
        except queue_mod.Empty:
            self._next_seq -= 1
            self.sent -= 1
            return False
        sizes = [len(b) for b in buffers]
        if sum(_aligned(n) for n in sizes) > self.slot_bytes:
            self.oversize += 1
            self.full.put((slot, header, [bytes(b) for b in buffers]))
            return True
        base, off = slot * self.slot_bytes, 0
        for b, n in zip(buffers, sizes):
            if n:
                np.copyto(self.arena[base + off: base + off + n], np.frombuffer(b, np.uint8))
            off += _aligned(n)
        self.full.put((slot, header, sizes))
        return True

    def recv(self, timeout: float | None = None) -> Message | None:
        while True:
            try:
                item = self.full.get(timeout=timeout)
            except queue_mod.Empty:
                return None
            slot = item[0] if isinstance(item, tuple) and item else None
            valid_slot = isinstance(slot, int) and 0 <= slot < self.slots
            try:
                msg = self._decode_item(item, valid_slot)
            except WireError as exc:
                self.reject(str(exc))
                continue
            finally:
                if valid_slot:  # never hand back a slot number we did not give out
                    self.free.put(slot)
            return self.account(msg)

    def _decode_item(self, item, valid_slot: bool) -> Message:
        """Check the queue item's shape before trusting any of it."""
        if not (isinstance(item, tuple) and len(item) == 3 and valid_slot):
            raise WireError("malformed queue item")
        slot, header, sizes = item
        if not isinstance(header, (bytes, bytearray)) or not isinstance(sizes, list):
            raise WireError("malformed queue item")
        if sizes and all(isinstance(b, (bytes, bytearray)) for b in sizes):
            return decode([header] + [bytearray(b) for b in sizes], self.max_bytes)  # oversize
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
            raise WireError("buffer sizes must be non-negative ints")
        return self._decode_slot(slot, header, sizes)

    def _decode_slot(self, slot: int, header: bytes, sizes: list[int]) -> Message:
        base, off, frames = slot * self.slot_bytes, 0, [header]
        if sum(_aligned(n) for n in sizes) > self.slot_bytes:
            raise WireError("buffer sizes exceed the slot")
        for n in sizes:
            # Copy out: the slot is reused as soon as it is handed back.
            frames.append(self.arena[base + off: base + off + n].copy().data)
            off += _aligned(n)
        return decode(frames, self.max_bytes)

    def depth(self) -> int:
        try:
            return self.full.qsize()
        except NotImplementedError:  # macOS
            return -1

    def close(self) -> None:
        # Flush, don't cancel: a last "stop" queued by this process must reach the pipe.
        # Both queues hold at most `slots` small items, so the flush cannot block on a
        # full pipe even when the peer is gone.
        for q in (self.full, self.free):
            q.close()
            q.join_thread()
