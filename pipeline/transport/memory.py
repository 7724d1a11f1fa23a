"""In-process channel: a deque. For benchmarks and tests that drive one role directly
(a pre-filled inbox, an outbox that keeps what it is sent)."""

from __future__ import annotations

import collections

from pipeline.transport.channel import Channel


class MemoryChannel(Channel):
    def __init__(self, messages=(), keep: bool = False):
        super().__init__()
        self.q = collections.deque(messages)
        self.keep = keep
        self.out: list = []

    def send(self, msg, timeout=None) -> bool:
        if self.keep:
            self.out.append(msg)
        return True

    def recv(self, timeout=None):
        return self.q.popleft() if self.q else None

    def depth(self) -> int:
        return len(self.q)
