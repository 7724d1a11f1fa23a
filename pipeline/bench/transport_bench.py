"""How fast does one hop move tensors? GB/s through the real codec and channel.

For each transport, a spawned sender process pushes one float32 tensor of each size again
and again for `seconds`, then a ctrl "epoch" marker; a spawned receiver process counts the
bytes between the first message of a round and the marker. Each (transport, size) runs 3
rounds and reports the median. A single-threaded numpy memcpy of the same size, measured
in this process during the same run, is the baseline: a hop cannot beat one copy, and
`local` pays one copy each way.

    transport   one hop
    memcpy      np.copyto, no hop (the baseline)
    local       ShmChannel: shared-memory ring, one memcpy in, one out
    zmq-tcp     ZmqChannel over tcp://127.0.0.1 (zero-copy send, kernel loopback)
    zmq-ipc     ZmqChannel over ipc:// (unix socket)
    dist-gloo   DistChannel, gloo over 127.0.0.1

Both ends of a hop are children, so every transport pays the same start-up; the parent
only waits for the receiver's report and always joins (or terminates) the children.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist

from pipeline.processes.supervise import SpawnedChild, collect, shutdown
from pipeline.transport.dist_channel import DistChannel
from pipeline.transport.local import ShmChannel
from pipeline.transport.zmq_channel import ZmqChannel
from pipeline.wire import Message, ctrl

KiB, MiB = 1 << 10, 1 << 20
DEFAULT_SIZES = (64 * KiB, 1 * MiB, 4 * MiB, 16 * MiB)
DEFAULT_TRANSPORTS = ("memcpy", "local", "zmq-tcp", "zmq-ipc", "dist-gloo")
REPS = 3
HWM = 4
RECV_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memcpy_gbps(size: int, seconds: float) -> list[float]:
    # Source and destination half a page apart: two arrays 16 bytes apart modulo 4 KiB
    # (what np.empty_like gave) hit 4K aliasing and made a 64 KiB copy 10x slower here.
    arena = np.empty(2 * size + 3 * 4096, dtype=np.uint8)
    start = -arena.ctypes.data % 4096
    src = arena[start: start + size]
    dst = arena[start + size + 4096 + 2048 - size % 4096:][:size]
    src[:] = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    rates = []
    for _ in range(REPS):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
            np.copyto(dst, src)
            n += 1
        rates.append(n * size / elapsed / 1e9)
    return rates


def _open(transport: str, spec, role: str, max_bytes: int):
    """Build one end of the hop inside a child; `spec` is what the parent prepared."""
    if transport == "local":
        return spec  # the ShmChannel itself, pickled to the child
    if transport.startswith("zmq"):
        make = ZmqChannel.receiver if role == "recv" else ZmqChannel.sender
        return make(spec, hwm=HWM, max_bytes=max_bytes)
    if transport == "dist-gloo":
        rank = 1 if role == "recv" else 0
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec}", rank=rank,
                                world_size=2)
        return DistChannel(1 - rank, role=role, max_bytes=max_bytes)
    raise ValueError(f"unknown transport {transport!r}")


def _sender_main(transport, spec, sizes, seconds, max_bytes, ready):
    torch.set_num_threads(1)
    ch = _open(transport, spec, "send", max_bytes)
    try:
        if not ready.wait(RECV_TIMEOUT_S):  # rounds timed against a receiver still starting
            raise RuntimeError("the receiver never became ready")  # would measure nothing
        for size in sizes:
            x = torch.rand(size // 4)  # never written after it is sent (zero-copy zmq)
            for rep in range(REPS):
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    ch.send(Message(kind="train", tensors={"x": x}))
                ch.send(ctrl("epoch", size=size, rep=rep))
        ch.send(ctrl("stop"))
    finally:
        _close(transport, ch)


def _receiver_main(transport, spec, max_bytes, results, ready):
    torch.set_num_threads(1)
    try:
        ch = _open(transport, spec, "recv", max_bytes)
        ready.set()
        rates, t0, nbytes = {}, None, 0
        try:
            while True:
                msg = ch.recv(timeout=RECV_TIMEOUT_S)
                if msg is None:
                    raise RuntimeError(f"no message from the sender for {RECV_TIMEOUT_S} s")
                now = time.perf_counter()
                if msg.kind == "ctrl" and msg.meta["op"] == "stop":
                    break
                if msg.kind == "ctrl":  # end of a round
                    if t0 is not None and now > t0 and nbytes:
                        rates.setdefault(msg.meta["size"], []).append(nbytes / (now - t0) / 1e9)
                    t0, nbytes = None, 0
                elif t0 is None:  # the clock starts at the first message of a round
                    t0 = now
                else:
                    nbytes += msg.nbytes()
        finally:
            _close(transport, ch)
        results.put(("ok", rates))
    except BaseException:
        results.put(("error", traceback.format_exc(limit=4)))


def _close(transport, ch):
    ch.close()
    if transport == "dist-gloo":
        if dist.is_initialized():
            dist.destroy_process_group()


def _measure(ctx, transport, sizes, seconds, max_bytes, tmpdir) -> dict:
    """{size: [GB/s per round]} for one transport, from a sender and a receiver child."""
    shm = None
    if transport == "local":
        # One channel for every size: slots fit the largest message plus 64 KiB.
        shm = spec = ShmChannel(ctx, slots=4, message_bytes=max(sizes) + 64 * KiB,
                                max_bytes=max_bytes)
    elif transport == "zmq-tcp":
        spec = f"tcp://127.0.0.1:{_free_port()}"
    elif transport == "zmq-ipc":
        spec = f"ipc://{tmpdir}/bench.sock"
    elif transport == "dist-gloo":
        spec = _free_port()
    else:
        raise ValueError(f"unknown transport {transport!r}")
    results, ready = ctx.Queue(), ctx.Event()
    children = []
    try:
        children.append(SpawnedChild(ctx.Process(
            target=_receiver_main, args=(transport, spec, max_bytes, results, ready),
            name=f"{transport} receiver", daemon=True)))
        children.append(SpawnedChild(ctx.Process(
            target=_sender_main, args=(transport, spec, sizes, seconds, max_bytes, ready),
            name=f"{transport} sender", daemon=True)))
        budget = 120 + len(sizes) * REPS * (seconds + 2)
        (status, value), = collect(children, results, 1, budget)
        if status != "ok":
            raise RuntimeError(f"{transport} receiver failed:\n{value}")
        return value
    finally:
        shutdown(children, timeout=10, ask=False)
        results.close()
        results.cancel_join_thread()
        if shm is not None:
            shm.close()


def _fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def run_transport_bench(sizes=DEFAULT_SIZES, transports=DEFAULT_TRANSPORTS, seconds=1.0,
                        stream=sys.stdout) -> list[dict]:
    """Measure every transport at every size; print a table; return one dict per row.

    Row keys: transport, size (bytes), gbps (median of 3 rounds, None if it failed),
    rounds (the 3 rates), ratio (gbps / memcpy gbps at that size), error (or None).
    """
    sizes = tuple(int(s) for s in sizes)
    max_bytes = max(sizes) + MiB
    ctx = torch.multiprocessing.get_context("spawn")
    base = {s: statistics.median(r) for s in sizes for r in [_memcpy_gbps(s, seconds)]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmpdir:
        for transport in transports:
            error, rates = None, {}
            if transport == "memcpy":
                rates = {s: [base[s]] for s in sizes}
            else:
                try:
                    rates = _measure(ctx, transport, sizes, seconds, max_bytes, tmpdir)
                except Exception as exc:  # report and go on with the other transports
                    error = str(exc).strip().splitlines()[-1]
            for s in sizes:
                r = rates.get(s, [])
                gbps = statistics.median(r) if r else None
                rows.append({"transport": transport, "size": s, "gbps": gbps, "rounds": r,
                             "ratio": gbps / base[s] if gbps else None,
                             "error": error if gbps is None else None})
    _print_table(rows, stream)
    return rows


def _print_table(rows, stream) -> None:
    print(f"{'transport':<10} {'size':>8} {'GB/s':>8} {'x memcpy':>9}", file=stream)
    for r in rows:
        if r["gbps"] is None:
            print(f"{r['transport']:<10} {_fmt_size(r['size']):>8} {'failed':>8}  "
                  f"{r['error'] or 'no rounds'}", file=stream)
        else:
            print(f"{r['transport']:<10} {_fmt_size(r['size']):>8} {r['gbps']:>8.2f} "
                  f"{r['ratio']:>9.2f}", file=stream)
    stream.flush()
