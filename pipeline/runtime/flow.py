"""Blocking send/receive with a way out: every wait is cut into short slices so a process
notices a stop request (Ctrl-C, a dead peer, a dead parent) within a fraction of a second
instead of blocking forever on a full or empty hop.

With a `Watch` (`pipeline.silence_timeout`), a process also notices a neighbour that has
gone silent without dying where a launcher could see it (`docker kill`, a frozen or cut-off
host) and raises `Silence`, naming it, instead of waiting forever: the sink fails the run
with it, the other roles stop as if asked to (`runtime.roles.run_process`), and those
blocked above the silent process stop once the sink has ended the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.errors import StageFailed
from pipeline.runtime.protocol import HEARTBEAT
from pipeline.transport.channel import Channel
from pipeline.wire import Message, ctrl

SLICE = 0.25  # seconds


class Stopped(Exception):
    """The process was asked to stop while it waited."""


class Silence(StageFailed):
    """A neighbour has been silent for longer than pipeline.silence_timeout (or, to a
    blocked sender, the sink has ended the run)."""


class Watch:
    """Whom this process has heard from lately, along the pipeline: position 0 is the
    source, k+1 stage k, K+1 the sink.

    A message from the source has passed every process before this one. A heartbeat (a
    stage that has sent nothing for a quarter of the timeout says it is alive) has passed
    the stage that sent it and every one after it. So the most downstream process not heard
    from for `timeout` seconds is the one that went silent: those above it may be alive,
    but nothing of theirs gets through it. Silence counts from the first message that
    passed a process, so start order and start-up time (a resuming stage can take a
    while) never matter.

    A blocked sender cannot tell a silent process below it from a slow start further down
    (backpressure looks the same), so it does not judge: it stops once the sink has ended
    the run, which the sink's `summary` says (written whenever the sink stops, unless it
    is killed outright).
    """

    def __init__(self, position: int, n_layers: int, timeout: float, *,
                 summary: Path | None = None, clock=time.monotonic):
        self.position, self.K, self.timeout = position, n_layers, timeout
        self.summary, self.clock = summary, clock
        # When each process upstream was last heard from (None: not yet).
        self.heard: list[float | None] = [None] * position
        self.last_sent = clock()
        self.started = time.time()  # to compare with the summary's modification time

    def name(self, position: int) -> str:
        if position == 0:
            return "source"
        return "sink" if position == self.K + 1 else f"stage {position - 1}"

    def heard_from(self, msg: Message) -> None:
        first = 0  # a message from the source vouches for everyone upstream
        if msg.kind == "ctrl" and msg.meta.get("op") == HEARTBEAT:
            stage = msg.meta.get("stage")
            if type(stage) is not int or not 0 <= stage < self.position - 1:
                return  # malformed: the role rejects and counts it
            first = stage + 1
        now = self.clock()
        for p in range(first, self.position):
            self.heard[p] = now

    def check_upstream(self) -> None:
        now = self.clock()
        for p in reversed(range(self.position)):
            if self.heard[p] is not None and now - self.heard[p] > self.timeout:
                what = "from it" if p == 0 else "through it"
                raise Silence(f"{self.name(self.position)}: {self.name(p)} has gone silent: "
                              f"nothing has come {what} for {self.timeout:g} s "
                              f"(pipeline.silence_timeout); stopped by hand, or cut off?")

    def check_downstream(self) -> None:
        """Blocked in a send: stop if the sink has ended the run since this process began."""
        try:
            ended = self.summary is not None and self.summary.stat().st_mtime >= self.started
        except OSError:  # not written (yet)
            return
        if ended:
            raise Silence(f"{self.name(self.position)}: the sink has ended the run (it wrote "
                          f"{self.summary}); nothing more can be sent")

    def sent(self, waited: float) -> None:
        """A send went through after `waited` seconds blocked, time in which this process
        was not listening: it does not count as silence upstream."""
        now = self.last_sent = self.clock()
        if waited > SLICE:
            self.heard = [h if h is None else min(h + waited, now) for h in self.heard]

    def heartbeat(self) -> Message | None:
        """The heartbeat this stage owes downstream now, if any."""
        if not 1 <= self.position <= self.K or (
                self.clock() - self.last_sent < self.timeout / 4):
            return None
        return ctrl(HEARTBEAT, stage=self.position - 1)


def watch_for(role: str, index: int, cfg: RunConfig) -> Watch | None:
    """The silence watch of one process; None when off (timeout 0, or torchrun ranks: a
    `dist` send cannot be given up, and torchrun ends the job when a rank dies)."""
    p = cfg.pipeline
    if not p.silence_timeout or p.transport == "dist":
        return None
    position = {"source": 0, "stage": index + 1, "sink": cfg.n_layers + 1}[role]
    return Watch(position, cfg.n_layers, p.silence_timeout,
                 summary=Path(cfg.out) / "summary.json")


class Flow:
    def __init__(self, inbox: Channel | None, outbox: Channel | None, should_stop,
                 watch: Watch | None = None):
        self.inbox, self.outbox, self.should_stop = inbox, outbox, should_stop
        self.watch = watch
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
                if self.watch is not None:
                    self.watch.check_downstream()
        finally:
            waited = time.perf_counter() - t0
            self.wait_send += waited
            if self.watch is not None:
                self.watch.sent(waited)

    def recv(self) -> Message:
        if self.should_stop():
            raise Stopped
        t0 = time.perf_counter()
        try:
            while True:
                msg = self.inbox.recv(timeout=SLICE)
                if msg is not None:
                    if self.watch is not None:  # heartbeats alone may keep arriving
                        self.watch.heard_from(msg)
                        self.watch.check_upstream()
                    return msg
                if self.should_stop():
                    raise Stopped
                if self.watch is not None:
                    self.idle()
        finally:
            self.wait_recv += time.perf_counter() - t0

    def idle(self) -> None:
        """Nothing arrived for a slice: tell downstream this stage is alive (never waiting
        for room: a full hop has news enough), then stop if a process upstream is silent."""
        beat = self.watch.heartbeat() if self.outbox is not None else None
        if beat is not None and self.outbox.send(beat, timeout=0):
            self.watch.sent(0.0)
        self.watch.check_upstream()

    def poll(self) -> Message | None:
        """A message if one is already waiting, else None (for the 'latest' policy)."""
        msg = self.inbox.recv(timeout=0)
        if msg is not None and self.watch is not None:
            self.watch.heard_from(msg)
        return msg

    def take_waits(self) -> tuple[float, float]:
        out = (self.wait_recv, self.wait_send)
        self.wait_recv = self.wait_send = 0.0
        return out
