"""How local children start: forked from a fork server where the platform has one
(Linux, macOS), else spawned (Windows). This module imports neither torch nor the rest
of the package, so a launcher can start the server before its own imports.

The fork server is one clean process that imports torch and the local launcher's
modules once (`PRELOAD`), and runs no torch op, so it has started no torch threads; each
child is forked from it and starts with everything imported. A spawned child runs a
fresh interpreter and imports torch itself: ~2-4 s of CPU per child on a 2-core machine,
five children in a default run, all before the first batch. Forking the launcher itself
is what must not happen: it has run torch ops, so its thread pools exist, and a forked
copy of them can hang. The server exits when the process that started it exits.

A forked child gets the launcher's working directory and sys.path as a spawned one does
(multiprocessing sends them with each child), but the environment variables the server
started with: those of the launcher at its first local run, not later changes to
os.environ.
"""

from __future__ import annotations

import multiprocessing

PRELOAD = ["pipeline.processes.local"]  # torch, the runtime roles, the local transport


def context():
    """The multiprocessing context local children (and benchmark children) start from."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # applies when the server starts (once per process)
    return ctx


def start_early() -> None:
    """Start the fork server now, so that its imports run while this process does its
    own (a launcher calls this before it imports torch); it is otherwise started when
    the first child is."""
    if context().get_start_method() == "forkserver":
        from multiprocessing import forkserver
        forkserver.ensure_running()
