"""The transport benchmark runs every transport through real child processes and leaves
none behind; numbers are not asserted (benchmarks print numbers, tests assert behaviour)."""

import io
import multiprocessing

import pytest

from pipeline.bench.transport_bench import run_transport_bench

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_bench_measures_every_transport_and_leaves_no_children():
    out = io.StringIO()
    transports = ("memcpy", "local", "zmq-tcp", "zmq-ipc", "dist-gloo", "no-such")
    rows = run_transport_bench(sizes=(64 << 10,), transports=transports, seconds=0.1,
                               stream=out)
    by_name = {r["transport"]: r for r in rows}
    assert list(by_name) == list(transports)
    for name in transports[:-1]:
        assert (by_name[name]["gbps"] or 0) > 0, out.getvalue()
        assert by_name[name]["ratio"] > 0
    assert by_name["no-such"]["gbps"] is None and "unknown transport" in by_name["no-such"]["error"]
    table = out.getvalue()
    assert "x memcpy" in table and "zmq-ipc" in table and "failed" in table
    assert not multiprocessing.active_children()
