"""Blocking send/receive with a way out: every wait is cut into short slices so a process
notices a stop request (Ctrl-C, a dead peer, a dead parent) within a fraction of a second
instead of blocking forever on a full or empty hop."""

from __future__ import annotations

import time

from pipeline.transport.channel import Channel
from pipeline.wire import Message

SLICE = 0.25  # seconds


class Stopped(Exception):
    """The process was asked to stop while it waited."""


class Flow:
    def __init__(self, inbox: Channel | None, outbox: Channel | None, should_stop):
        self.inbox, self.outbox, self.should_stop = inbox, outbox, should_stop
        self.wait_recv = 0.0   # seconds spent waiting for input (starved)
        self.wait_send = 0.0   # seconds spent waiting for room downstream (backpressure)

    def send(self, msg: Message) -> None:
        if self.should_stop():  # checked per message too: a busy pipeline never times out
            raise Stopped
        t0 = time.perf_counter()
        try:
            while not self.outbox.send(msg, timeout=SLICE):
                if self.should_stop():
                    raise Stopped
        finally:
            self.wait_send += time.perf_counter() - t0

    def recv(self) -> Message:
        if self.should_stop():
            raise Stopped
        t0 = time.perf_counter()
        try:
            while True:
                msg = self.inbox.recv(timeout=SLICE)
                if msg is not None:
                    return msg
                if self.should_stop():
                    raise Stopped
        finally:
            self.wait_recv += time.perf_counter() - t0

    def poll(self) -> Message | None:
        """A message if one is already waiting, else None (for the 'latest' policy)."""
        return self.inbox.recv(timeout=0)

    def take_waits(self) -> tuple[float, float]:
        out = (self.wait_recv, self.wait_send)
        self.wait_recv = self.wait_send = 0.0
        return out
