"""Watching the processes of a run: one supervisor for every launcher and benchmark.

A child is a `multiprocessing` process (spawned, or forked from a fork server) or an OS
process (`subprocess.Popen`), behind one small interface. `supervise` waits until the
process that marks the end of the run exits cleanly and raises `StageFailed` as soon as
any child fails, naming it and why; `shutdown` asks every child to stop, gives them
`timeout` seconds to flush their checkpoints, then terminates and kills what is left.
Launchers call `shutdown` in a `finally`, so no child outlives its launcher (success,
failure, Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import abc
import ctypes
import logging
import os
import queue
import signal
import subprocess
import time
from multiprocessing.connection import wait as wait_any

from pipeline.errors import StageFailed

log = logging.getLogger(__name__)
POLL_S = 0.25


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Child(abc.ABC):
    """One supervised process: a name and the five things a supervisor does to it."""

    name: str
    sentinel = None  # a handle `multiprocessing.connection.wait` can block on, if any

    @abc.abstractmethod
    def exitcode(self) -> int | None:
        """None while it runs; negative: killed by that signal."""

    @abc.abstractmethod
    def ask_stop(self) -> None:
        """Ask for a clean stop (checkpoint, then exit); returns at once."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """SIGTERM."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL."""

    @abc.abstractmethod
    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for it to exit."""


class SpawnedChild(Child):
    """A `multiprocessing` process; asked to stop through a shared event (its SIGINT is
    ignored: the launcher coordinates Ctrl-C)."""

    def __init__(self, proc, stop_event=None):
        self.proc, self.stop_event, self.name = proc, stop_event, proc.name
        proc.start()
        self.sentinel = proc.sentinel

    def exitcode(self):
        return self.proc.exitcode

    def ask_stop(self):
        if self.stop_event is not None:
            self.stop_event.set()

    def terminate(self):
        self.proc.terminate()

    def kill(self):
        self.proc.kill()

    def join(self, timeout):
        self.proc.join(timeout)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the launcher dies (Linux), so a killed
    launcher leaves no orphan workers behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PopenChild(Child):
    """An OS process (a worker, torchrun); asked to stop with SIGTERM, which workers
    treat as "checkpoint and stop"."""

    def __init__(self, name: str, cmd: list[str], env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                                     preexec_fn=_die_with_parent)

    def exitcode(self):
        return self.proc.poll()

    def ask_stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self):
        self.proc.terminate()

    def kill(self):
        self.proc.kill()

    def join(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _wait(children: list[Child]) -> None:
    sentinels = [c.sentinel for c in children if c.sentinel is not None]
    if len(sentinels) == len(children):
        wait_any(sentinels, timeout=POLL_S)
    else:
        time.sleep(POLL_S)


def _reported(errors) -> dict[str, str]:
    """Errors children put on the launcher's queue: {name: one line}; tracebacks logged."""
    out = {}
    while errors is not None:
        try:
            name, line, tb = errors.get_nowait()
        except queue.Empty:
            break
        out[name] = line
        if tb:
            log.error("%s failed:\n%s", name, tb)
    return out


def failures(children: list[Child], errors=None) -> list[tuple[int, str]]:
    """(position, why) of every child that failed: it reported an error or exited badly."""
    reported = _reported(errors)
    out = []
    for i, c in enumerate(children):
        code = c.exitcode()
        if c.name in reported or code not in (None, 0):
            out.append((i, reported.get(c.name) or describe_exit(code)))
    return out


def first_failure(children: list[Child], errors=None) -> str | None:
    for i, why in failures(children, errors)[:1]:
        return f"{children[i].name} died ({why}); stopped the other processes"
    return None


def supervise(children: list[Child], done: Child, errors=None, restart=None) -> None:
    """Block until `done` exits 0. A child that fails is replaced by `restart(child,
    why)` when that returns one; otherwise StageFailed is raised at once."""
    while True:
        _wait(children)
        for i, why in failures(children, errors):
            again = restart(children[i], why) if restart else None
            if again is None:
                raise StageFailed(f"{children[i].name} died ({why}); stopped the other "
                                  f"processes")
            children[i] = again
        if done.exitcode() == 0:
            return


def collect(children: list[Child], results, count: int, timeout: float) -> list:
    """`count` results the children put on `results` (benchmarks); StageFailed if a
    child dies first or nothing more arrives within `timeout` seconds."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < count:
        try:
            out.append(results.get(timeout=POLL_S))
            continue
        except queue.Empty:
            pass
        failure = first_failure(children)
        if failure:
            raise StageFailed(failure)
        if time.monotonic() > deadline:
            raise StageFailed(f"no result from {', '.join(c.name for c in children)} "
                              f"within {timeout:.0f} s")
    return out


class RestartBudget:
    """Which failed children may be restarted alone: stages, at most `per_stage` times
    each. `make(child, attempt)` builds (and starts) the replacement, or returns None."""

    def __init__(self, per_stage: int, make, timeout: float):
        self.per_stage, self.make, self.timeout = per_stage, make, timeout
        self.used: dict[str, int] = {}

    def __call__(self, child: Child, why: str) -> Child | None:
        attempt = self.used.get(child.name, 0) + 1
        if not child.name.startswith("stage ") or attempt > self.per_stage:
            return None
        child.join(self.timeout)  # it reported an error and is on its way out
        if child.exitcode() is None:
            child.kill()
            child.join(5.0)
        again = self.make(child, attempt)
        if again is not None:
            self.used[child.name] = attempt
            log.warning("%s died (%s); restarted it alone from its last checkpoint "
                        "(restart %d of %d)", child.name, why, attempt, self.per_stage)
        return again


def shutdown(children: list[Child], timeout: float, ask: bool = True) -> None:
    """Ask every child to stop (unless they were told by message), wait up to `timeout`
    seconds for all of them, then terminate and finally kill what is left."""
    if ask:
        for c in children:
            c.ask_stop()
    deadline = time.monotonic() + timeout
    for c in children:
        c.join(max(deadline - time.monotonic(), 0.1))
    for c in children:
        if c.exitcode() is None:
            log.warning("%s did not stop in %.0fs; terminating", c.name, timeout)
            c.terminate()
            c.join(2.0)
        if c.exitcode() is None:
            c.kill()
            c.join(5.0)


def run_supervised(start, done: int, timeout: float, errors=None, restart=None) -> None:
    """Start the children `start` yields (each is started as it is made), `supervise`
    until children[done] exits cleanly, then stop everyone: on success the children were
    told by message and get `timeout` seconds to exit; on a failure, Ctrl-C or SIGTERM
    (even while starting) each child that started is asked to stop."""
    children: list[Child] = []
    try:
        children.extend(start)
        supervise(children, children[done], errors, restart)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            log.info("interrupted: stopping every process (checkpoints are flushed)")
        shutdown(children, timeout)
        raise
    shutdown(children, timeout, ask=False)
