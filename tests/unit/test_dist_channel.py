"""DistChannel over gloo: two spawned ranks on 127.0.0.1, rank 0 sends, rank 1 receives.

Each test runs one scenario in a fresh pair of processes; the parent collects both ranks'
reports from a queue with a deadline and terminates the children in `finally`.
"""

import multiprocessing
import os
import queue
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from pipeline.processes.dist import init_dist
from pipeline.transport.dist_channel import DistChannel
from pipeline.wire import Message, WireError

pytestmark = pytest.mark.timeout(60)
MAX = 1 << 24
DEADLINE_S = 45


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mixed_tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(64, 300, generator=g),
        "f16": torch.randn(5, 7, generator=g).half(),
        "bf16": torch.randn(3, 1000, generator=g).bfloat16(),
        "i64": torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
        "u8": torch.randint(0, 256, (17,), dtype=torch.uint8, generator=g),
        "bool": torch.tensor([True, False, True]),
        "strided": torch.randn(8, 6, generator=g).t(),
        "empty": torch.empty(0, 4),
    }


def scenario_round_trip(rank, ready):
    if rank == 0:
        ch = DistChannel(1, role="send", max_bytes=MAX)
        msg = Message(kind="train", versions=[4, 2], meta={"step": 9}, tensors=mixed_tensors())
        return [ch.send(msg), ch.send(Message(kind="ctrl", meta={"op": "stop"}))]
    ch = DistChannel(0, role="recv", max_bytes=MAX)
    got, stop = ch.recv(timeout=20), ch.recv(timeout=20)
    want = mixed_tensors()
    return {
        "header": (got.kind, got.versions, got.meta, got.seq, stop.kind, stop.seq),
        "names": list(got.tensors) == list(want),
        "dtype_and_value": {k: got.tensors[k].dtype == t.dtype and torch.equal(got.tensors[k], t)
                            for k, t in want.items()},
        "counters": (ch.received, ch.gaps, ch.rejected),
    }


def scenario_timeout(rank, ready):
    if rank == 0:
        ch = DistChannel(1, role="send", max_bytes=MAX)
        if not ready.wait(20):
            raise RuntimeError("receiver never reported its timed-out recvs")
        for i in range(2):
            ch.send(Message(kind="eval", meta={"i": i}, tensors={"x": torch.full((3,), i)}))
        return "sent"
    ch = DistChannel(0, role="recv", max_bytes=MAX)
    t0 = time.monotonic()
    first = ch.recv(timeout=0.3)
    waited = time.monotonic() - t0
    second = ch.recv(timeout=0.1)  # re-uses the pending irecv, posts no second one
    ready.set()
    a, b = ch.recv(timeout=20), ch.recv(timeout=20)
    return {"timed_out": (first, second), "waited": waited,
            "got": [(m.meta["i"], m.seq, m.tensors["x"].tolist()) for m in (a, b)]}


def scenario_bad_length(rank, ready):
    if rank == 0:
        dist.send(torch.tensor([1 << 40], dtype=torch.int64), 1)
        return "sent"
    ch = DistChannel(0, role="recv", max_bytes=MAX)
    try:
        ch.recv(timeout=20)
    except WireError as exc:
        return {"error": str(exc), "rejected": ch.rejected}
    return {"error": None}


SCENARIOS = {f.__name__: f for f in (scenario_round_trip, scenario_timeout, scenario_bad_length)}


def rank_main(rank, port, scenario, results, ready):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    try:
        assert init_dist("gloo", timeout_s=30) == (rank, 2, rank, torch.device("cpu"))
        results.put((rank, "ok", SCENARIOS[scenario](rank, ready)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_pair(scenario) -> dict:
    ctx = tmp.get_context("spawn")
    results, ready, port = ctx.Queue(), ctx.Event(), free_port()
    procs = [ctx.Process(target=rank_main, args=(r, port, scenario.__name__, results, ready),
                         daemon=True) for r in (0, 1)]
    out = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + DEADLINE_S
        while len(out) < 2:
            try:
                rank, status, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{scenario.__name__}: ranks {sorted(set((0, 1)) - set(out))} "
                            f"did not report within {DEADLINE_S}s")
            assert status == "ok", f"rank {rank} failed:\n{value}"
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    assert not multiprocessing.active_children()
    return out


def test_gloo_round_trip_keeps_every_dtype_shape_value_and_header():
    out = run_pair(scenario_round_trip)
    assert out[0] == [True, True]
    r = out[1]
    assert r["header"] == ("train", [4, 2], {"step": 9}, 0, "ctrl", 1)
    assert r["names"]
    assert all(r["dtype_and_value"].values()), r["dtype_and_value"]
    assert r["counters"] == (2, 0, 0)


def test_recv_returns_none_on_timeout_then_the_messages_in_order():
    r = run_pair(scenario_timeout)[1]
    assert r["timed_out"] == (None, None)
    assert r["waited"] >= 0.25
    assert r["got"] == [(0, 0, [0, 0, 0]), (1, 1, [1, 1, 1])]


def test_impossible_header_length_is_a_fatal_wire_error_and_counted():
    r = run_pair(scenario_bad_length)[1]
    assert r["error"] and "out of sync" in r["error"]
    assert r["rejected"] == 1


@pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="this machine has a GPU per rank")
def test_nccl_without_a_gpu_per_local_rank_says_to_use_gloo(monkeypatch):
    from pipeline.errors import UserError
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(UserError, match="one GPU per local rank.*dist_backend gloo"):
        init_dist("nccl", timeout_s=5)
