"""A hop through a torch.distributed key-value store (the TCPStore every torchrun job
already has): for small, occasional messages that must never block either end, such as
the feedback edge of pipelined hard negatives (sink -> source) under `--transport dist`.

A point-to-point `dist.send` blocks until the peer receives, and the source is itself
blocked behind the stages the sink waits on: a send back upstream could close a cycle
and deadlock. Through the store, `send` is one `set` and never waits for the peer;
the receiver takes messages in order and counts how far it got, and the sender refuses
(returns False) once `capacity` messages wait untaken, so the store cannot fill up.

    key NAME/<seq>    one message: msgpack [header, buffer, ...] (the wire frames)
    key NAME/taken    how many messages the receiver has taken (store.add is atomic)
"""

from __future__ import annotations

import time

import msgpack

from pipeline.transport.channel import Channel
from pipeline.wire import MAX_TENSORS, Message, WireError, decode, encode

POLL_S = 1e-3


class StoreChannel(Channel):
    def __init__(self, store, name: str, *, max_bytes: int, capacity: int = 8):
        super().__init__()
        self.store, self.prefix = store, f"ffpipe/{name}"
        self.max_bytes, self.capacity = max_bytes, capacity
        self._taken = f"{self.prefix}/taken"

    def send(self, msg: Message, timeout: float | None = None) -> bool:
        """Never blocks on the peer: False (nothing sent) while `capacity` messages wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._next_seq - self.store.add(self._taken, 0) >= self.capacity:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        frames = encode(self.stamp(msg))
        blob = msgpack.packb([bytes(frames[0])] + [bytes(memoryview(b)) for b in frames[1:]],
                             use_bin_type=True)
        self.store.set(f"{self.prefix}/{msg.seq}", blob)
        return True

    def recv(self, timeout: float | None = None) -> Message | None:
        seq = 0 if self._expect_seq is None else self._expect_seq
        key = f"{self.prefix}/{seq}"
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.store.check([key]):
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)
        blob = self.store.get(key)
        self.store.delete_key(key)
        self.store.add(self._taken, 1)
        if self._expect_seq is None:
            self._expect_seq = 0
        try:
            frames = msgpack.unpackb(blob, raw=False, max_bin_len=self.max_bytes,
                                     max_array_len=MAX_TENSORS + 1, max_map_len=0,
                                     max_str_len=0, max_ext_len=0)
            if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
                raise WireError("store message is not a list of byte frames")
            msg = decode(frames, self.max_bytes)
        except (WireError, ValueError, msgpack.UnpackException) as exc:
            self._expect_seq += 1  # the key is gone either way: move on to the next one
            self.reject(str(exc))
            return None
        return self.account(msg)
