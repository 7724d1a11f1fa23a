"""The transport interface: one direction of one hop (source -> stage 0, stage 0 ->
stage 1, ...). The sending process holds the sender end, the receiving process the
receiver end; every process has at most one inbox and one outbox.

Implementations: `local.ShmChannel` (shared-memory ring), `zmq_channel.ZmqChannel`,
`dist_channel.DistChannel`, and `memory.MemoryChannel` for tests and benchmarks.
"""

from __future__ import annotations

import abc
import logging

from pipeline.wire import Message

log = logging.getLogger(__name__)
LOG_FIRST, LOG_EVERY = 20, 1000


class Channel(abc.ABC):
    """Counters every transport keeps the same way, and the methods each must provide."""

    def __init__(self) -> None:
        self.rejected = 0     # messages the decoder refused
        self.gaps = 0         # sequence numbers skipped (messages lost in transit)
        self.sent = 0
        self.received = 0
        self.device_bytes = 0  # tensor bytes sent without a host copy (device_ring)
        self._next_seq = 0    # sender side
        self._expect_seq = None  # receiver side
        # (id of the last delivered message, _expect_seq before it, its gap). An id, not
        # the message: holding it would keep its buffers alive past the next recv.
        self._undo = None

    @abc.abstractmethod
    def send(self, msg: Message, timeout: float | None = None) -> bool:
        """Stamp `msg` with the next sequence number (`stamp`) and hand it to the hop.
        Blocks while the hop is full (backpressure), at most `timeout` seconds (None:
        forever). False if it timed out (the message was not sent: the caller decides
        to retry); True once the hop has it. Must not modify the message's tensors,
        and the caller must not modify them afterwards (zero-copy transports)."""

    @abc.abstractmethod
    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message in order, or None after `timeout` seconds (0: only what is
        already there). Malformed input is counted (`reject`) and skipped, never raised
        to the caller; a delivered message goes through `account`."""

    def depth(self) -> int:
        """Messages waiting in the hop (-1 if the transport cannot tell)."""
        return -1

    def finish(self, timeout: float) -> None:
        """The last message was sent: let what is still queued leave for up to `timeout`
        seconds before `close` (a no-op where `send` returns only once it has left)."""

    def close(self) -> None:
        """Release the hop's resources."""

    # ---- for implementations ---------------------------------------------------------
    def stamp(self, msg: Message) -> Message:
        msg.seq = self._next_seq
        self._next_seq += 1
        self.sent += 1
        return msg

    def account(self, msg: Message) -> Message:
        gap = 0
        if self._expect_seq is not None and msg.seq > self._expect_seq:
            gap = msg.seq - self._expect_seq
        self._undo = (id(msg), self._expect_seq, gap)
        self.gaps += gap
        self._expect_seq = msg.seq + 1
        self.received += 1
        return msg

    def reject(self, reason: str, msg: Message | None = None) -> None:
        """Count a bad message. `msg`: one that decoded and was delivered, but whose content
        the role refused: its sequence number is not ours to trust (any peer that can reach
        the socket chooses it), so the gap it made, if any, is taken back. That is exact
        when `msg` is the last message delivered (a role checks each one as it takes it);
        the 'latest' policy, which pulls ahead, keeps the gap."""
        self.rejected += 1
        undo = self._undo
        if msg is not None and undo is not None and undo[0] == id(msg):
            _, self._expect_seq, gap = undo
            self.gaps -= gap
            self.received -= 1
            self._undo = None
        # A flood of bad input must not become a flood of log lines: the first
        # LOG_FIRST in full, then one line per LOG_EVERY (the count is always exact).
        if self.rejected <= LOG_FIRST or self.rejected % LOG_EVERY == 0:
            log.warning("rejected a message: %s (%d rejected so far)", reason, self.rejected)
