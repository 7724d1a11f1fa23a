"""Transports: one interface, three implementations (local shared memory, zmq, dist).

A `Channel` is one direction of one hop (source -> stage0, stage0 -> stage1, ...). The
sending process holds its sender end, the receiving process its receiver end; every
process has at most one inbox and one outbox.

    send(msg, timeout) -> bool     blocks while the hop is full (backpressure);
                                   False if it timed out, the caller decides to retry
    recv(timeout) -> Message|None  None on timeout; malformed input is counted in
                                   `rejected` and skipped, never raised to the caller
    depth() -> int                 messages waiting in the hop (-1 if unknown)
    close()
"""

from __future__ import annotations

import logging

from pipeline.wire import Message

log = logging.getLogger(__name__)


class Channel:
    """Counters shared by every transport; subclasses implement the four methods."""

    def __init__(self) -> None:
        self.rejected = 0     # messages the decoder refused
        self.gaps = 0         # sequence numbers skipped (messages lost in transit)
        self.sent = 0
        self.received = 0
        self._next_seq = 0    # sender side
        self._expect_seq = None  # receiver side

    def stamp(self, msg: Message) -> Message:
        msg.seq = self._next_seq
        self._next_seq += 1
        self.sent += 1
        return msg

    def account(self, msg: Message) -> Message:
        if self._expect_seq is not None and msg.seq > self._expect_seq:
            self.gaps += msg.seq - self._expect_seq
        self._expect_seq = msg.seq + 1
        self.received += 1
        return msg

    def reject(self, reason: str) -> None:
        self.rejected += 1
        log.warning("rejected a message: %s (%d rejected so far)", reason, self.rejected)

    def send(self, msg: Message, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> Message | None:
        raise NotImplementedError

    def depth(self) -> int:
        return -1

    def close(self) -> None:
        pass
