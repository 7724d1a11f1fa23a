"""processes.jsonl (runtime.process_log) and the torch-free fork_server module."""

import json
import subprocess
import sys
import time

import pytest

from pipeline.fork_server import context
from pipeline.runtime.flow import Flow
from pipeline.runtime.process_log import (ClockedFlow, ProcessRecord, peak_rss_mb,
                                          process_start_time, read_processes)
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import Message, ctrl

pytestmark = pytest.mark.timeout(60)


def train(step: int) -> Message:
    return Message("train", meta={"step": step, "total": 2, "n": 1})


def test_clocked_flow_notes_the_first_train_message_in_and_out_only(tmp_path):
    record = ProcessRecord("stage", 1, launch=123.0)
    inbox = MemoryChannel([ctrl("start"), train(0), train(1)])
    flow = ClockedFlow(inbox, MemoryChannel(), lambda: False, record=record)
    assert flow.recv().kind == "ctrl" and "first_train_in" not in record.fields
    flow.send(ctrl("start"))
    assert "first_train_out" not in record.fields
    flow.send(flow.recv())
    first_in, first_out = record.fields["first_train_in"], record.fields["first_train_out"]
    assert record.fields["entered"] <= first_in <= first_out
    flow.send(flow.recv())
    assert (record.fields["first_train_in"], record.fields["first_train_out"]) == \
        (first_in, first_out)
    assert isinstance(flow, Flow)


def test_every_process_appends_its_own_line(tmp_path):
    for role, index in (("source", 0), ("stage", 0), ("sink", 0)):
        record = ProcessRecord(role, index, launch=1.0, restarts=0)
        record.mark("ready")
        record.mark("ended")
        record.append_to(tmp_path)
    lines = read_processes(tmp_path)
    assert [(p["role"], p["index"]) for p in lines] == [("source", 0), ("stage", 0),
                                                         ("sink", 0)]
    for p in lines:
        assert p["entered"] <= p["ready"] <= p["ended"] and p["launch"] == 1.0
        assert p["peak_rss_mb"] > 0 and p["cpu_seconds"] > 0
        assert isinstance(p["dynamo_imported"], bool)
    assert read_processes(tmp_path / "nothing") == []


def test_this_process_started_before_now_and_holds_memory():
    started = process_start_time()
    if started is None:
        pytest.skip("no /proc here")
    assert started <= time.time()
    # pytest has been running for a while; a wrong unit (ticks, ms) is far off
    assert time.time() - started < 24 * 3600
    assert 10 < peak_rss_mb() < 1 << 20


def test_fork_server_module_imports_neither_torch_nor_the_package():
    """A launcher starts the server before its own imports: the module must be light."""
    code = ("import sys, pipeline.fork_server as f\n"
            "print(json.dumps(sorted(m for m in ('torch', 'numpy', 'pipeline.processes') "
            "if m in sys.modules)))\n")
    r = subprocess.run([sys.executable, "-P", "-c", "import json\n" + code],
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_children_fork_from_a_server_where_the_platform_has_one():
    import multiprocessing
    expected = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
        else "spawn"
    assert context().get_start_method() == expected
