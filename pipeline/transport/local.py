"""`local` transport: processes on one machine, messages through a shared-memory ring.

Every hop has one sender and one receiver. The parent allocates, per hop, `slots`
fixed-size slots in shared memory and two counting semaphores before it spawns the
children. The sender waits on `free` (all slots in flight: that is the backpressure),
writes the next slot in ring order, and posts `full`; the receiver waits on `full`,
decodes the next slot with the same codec as the network transports, copies the tensors
out and posts `free`. One memcpy each way, no pickling, no queue feeder threads: a hand-off
is one futex wake when the other side is asleep, and nothing when it is not. Nothing is
buffered in the process, so `close` has nothing to flush.

A slot holds a small fixed prefix, the msgpack header and the tensor bytes:

    u64 header length (or OVERSIZE) | u64 buffer count | u64 size per buffer | header | buffers

A message larger than a slot (not expected with the sizes `runtime.protocol` computes) is laid
out the same way in a private buffer and sent as raw bytes through a side pipe; its slot
carries only the OVERSIZE mark, so the order holds. Nothing is pickled. The receiver
checks every length against the slot (or body) before it trusts any of them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.transport.channel import Channel
from pipeline.wire import HEADER_CAP, MAX_TENSORS, WireError, decode, encode, Message

ALIGN = 64
# What the slot layout adds to a message's bytes at most: the prefix, and the padding
# that aligns the header and every buffer.
LAYOUT_ROOM = ALIGN * (MAX_TENSORS + 2) + 8 * MAX_TENSORS
OVERSIZE = (1 << 64) - 1
SIDE_WAIT_S = 10.0  # how long a receiver waits for an oversize body its slot announced
FOLLOW_S = 0.25     # a waiting receiver checks this often whether its sender was replaced


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _layout(header_len: int, sizes: list[int]) -> tuple[int, list[int], int]:
    """(header offset, buffer offsets, bytes used) of a slot holding this message."""
    off = _aligned(16 + 8 * len(sizes))
    header_at = off
    off += _aligned(header_len)
    offsets = []
    for n in sizes:
        offsets.append(off)
        off += _aligned(n)
    return header_at, offsets, off


def _pack(area: np.ndarray, header: bytes, buffers: list, sizes: list[int],
          header_at: int, offsets: list[int]) -> None:
    """Write one message into `area` at the offsets `_layout` gave for it."""
    prefix = area[: 16 + 8 * len(sizes)].view(np.uint64)
    prefix[:2] = (len(header), len(sizes))
    prefix[2:] = sizes
    area[header_at: header_at + len(header)] = np.frombuffer(header, np.uint8)
    for b, n, at in zip(buffers, sizes, offsets):
        if n:
            np.copyto(area[at: at + n], np.frombuffer(b, np.uint8))


def _unpack(area: np.ndarray) -> list[np.ndarray]:
    """[header, buffer, ...] as views of `area`; every length is checked against it first."""
    room = len(area)
    if room < 16:
        raise WireError("slot too short for its prefix")
    header_len, count = (int(v) for v in area[:16].view(np.uint64))
    if count > MAX_TENSORS or 16 + 8 * count > room:
        raise WireError(f"slot announces {count} buffers")
    sizes = [int(n) for n in area[16: 16 + 8 * count].view(np.uint64)]
    header_at, offsets, used = _layout(header_len, sizes)
    if used > room:
        raise WireError("slot lengths exceed the slot")
    return [area[header_at: header_at + header_len]] + [area[at: at + n]
                                                        for n, at in zip(sizes, offsets)]


class ShmChannel(Channel):
    """One hop of the local transport; picklable to spawned children. `message_bytes`:
    the largest message (header and tensors) a slot must hold.

    `generations` > 1 lets the hop survive the death of one end: the launcher calls
    `replace_end()` before it starts the replacement process, which attaches to a fresh
    ring. The live end follows on its next call: a live sender moves to the new ring at
    once (what the dead receiver had not taken is lost, and shows as sequence gaps); a
    live receiver first takes every message the dead sender had posted, then moves. A
    half-written slot was never posted, so it is never read.
    """

    def __init__(self, ctx, slots: int, message_bytes: int, max_bytes: int,
                 generations: int = 1):
        super().__init__()
        self.slot_bytes = _aligned(message_bytes + LAYOUT_ROOM)
        self.slots = slots
        self.max_bytes = max_bytes
        # Rings are allocated up front (spawned children cannot be handed new shared
        # memory later); pages of a ring never used are never touched.
        self.rings = [(torch.empty(slots * self.slot_bytes, dtype=torch.uint8).share_memory_(),
                       ctx.Semaphore(slots), ctx.Semaphore(0), *ctx.Pipe(duplex=False))
                      for _ in range(generations)]
        # [generation, next sequence number to send, next one expected]: what a
        # replacement end needs to carry on where the dead one stopped.
        self.shared = torch.zeros(3, dtype=torch.int64).share_memory_()
        self._init_local()

    def _init_local(self) -> None:
        self._counters = None
        self._use(int(self.counters[0]))
        self.oversize = 0
        if int(self.counters[0]):  # a replacement end: a receiver counts what was lost,
            self._expect_seq = int(self.counters[2])  # from seq 0 if nothing ever arrived

    def _use(self, generation: int) -> None:
        """Work on ring `generation` from its start (a fresh ring, or attaching)."""
        self.g = generation
        self.buf, self.free, self.full, self.side_r, self.side_w = self.rings[generation]
        self._np = None
        self._w = self._r = 0  # next slot to write (sender) / read (receiver), ring order

    def replace_end(self) -> bool:
        """Launcher side: one end of the hop died and a new process will take its place.
        False when every spare ring has been used."""
        if int(self.counters[0]) + 1 >= len(self.rings):
            return False
        self.counters[0] += 1
        return True

    def __getstate__(self):
        return {k: getattr(self, k)
                for k in ("slot_bytes", "slots", "max_bytes", "rings", "shared")}

    def __setstate__(self, state):
        Channel.__init__(self)
        for k, v in state.items():
            setattr(self, k, v)
        self._init_local()

    @property
    def counters(self) -> np.ndarray:
        # A numpy view: reading or writing one of them costs ~0.1 us, a torch scalar ~5 us.
        if self._counters is None:
            self._counters = self.shared.numpy()
        return self._counters

    @property
    def arena(self) -> np.ndarray:
        # numpy's copy is a plain memcpy; torch's uint8 copy_ was slower on this machine.
        if self._np is None:
            self._np = self.buf.numpy()
        return self._np

    # ---- sender ----------------------------------------------------------------------
    def send(self, msg: Message, timeout: float | None = None) -> bool:
        if int(self.counters[0]) != self.g:  # the receiver was replaced: its fresh ring
            self._use(int(self.counters[0]))
        # Sequence numbers continue across a replaced sender, so losses show as gaps.
        self._next_seq = max(self._next_seq, int(self.counters[1]))
        frames = encode(self.stamp(msg))
        if not self.free.acquire(True, timeout):
            self._next_seq -= 1
            self.sent -= 1
            return False
        self.write_slot(frames[0], frames[1:])
        self.counters[1] = self._next_seq
        return True

    def write_slot(self, header: bytes, buffers: list) -> None:
        """Fill the next slot (the caller holds a `free` count) and post it."""
        base = self._w % self.slots * self.slot_bytes
        self._w += 1
        sizes = [memoryview(b).nbytes for b in buffers]
        header_at, offsets, used = _layout(len(header), sizes)
        if used <= self.slot_bytes:
            _pack(self.arena[base: base + self.slot_bytes], header, buffers, sizes,
                  header_at, offsets)
            self.full.release()
            return
        self.oversize += 1
        body = np.empty(used, np.uint8)
        _pack(body, header, buffers, sizes, header_at, offsets)
        self.arena[base: base + 16].view(np.uint64)[:] = (OVERSIZE, 0)
        self.full.release()  # first: the receiver must be reading while the pipe fills
        self.side_w.send_bytes(body)

    # ---- receiver --------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Message | None:
        while True:
            if int(self.counters[0]) != self.g:  # the sender was replaced
                if not self.full.acquire(False):  # all it posted has been taken
                    self._use(int(self.counters[0]))
                    continue
            elif not self._acquire_full(timeout):
                return None
            base = self._r % self.slots * self.slot_bytes
            self._r += 1
            try:
                slot = self.arena[base: base + self.slot_bytes]
                if int(slot[:8].view(np.uint64)[0]) == OVERSIZE:
                    msg = self._decode(self._read_side())
                else:
                    msg = self._decode(slot, base)
            except WireError as exc:
                self.reject(str(exc))
                continue
            finally:
                self.free.release()  # copied out (or refused): the slot is the sender's again
            self.account(msg)
            self.counters[2] = self._expect_seq
            return msg

    def _acquire_full(self, timeout: float | None) -> bool:
        """Wait for a posted slot, in slices, so a replaced sender is noticed while waiting."""
        if timeout is not None and timeout <= FOLLOW_S:
            return self.full.acquire(True, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = FOLLOW_S if deadline is None else min(FOLLOW_S, deadline - time.monotonic())
            if self.full.acquire(True, max(left, 0)):
                return True
            if int(self.counters[0]) != self.g or (deadline is not None and
                                                 time.monotonic() >= deadline):
                return False

    def _decode(self, area: np.ndarray, base: int | None = None) -> Message:
        """The message in `area` (a slot at `base` of the ring, or an oversize body)."""
        header, *buffers = _unpack(area)
        # Copy out: the slot is reused as soon as it is handed back.
        return decode([header.tobytes()] + [b.copy().data for b in buffers], self.max_bytes)

    def _read_side(self) -> np.ndarray:
        limit = self.max_bytes + HEADER_CAP + self.slot_bytes
        try:
            if not self.side_r.poll(SIDE_WAIT_S):
                raise WireError("oversize message announced but its body never came")
            return np.frombuffer(self.side_r.recv_bytes(limit), np.uint8)
        except (OSError, EOFError) as exc:
            raise WireError(f"oversize body unreadable: {exc}") from None

    def depth(self) -> int:
        try:
            return self.full.get_value()
        except NotImplementedError:  # macOS
            return -1
