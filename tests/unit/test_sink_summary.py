"""summary.json says whether its staleness figures are exact: a pipeline driven in one
process (source, two stages, sink over in-memory channels), once with stages that read
the upstream versions from a shared board and once with stamps alone (what zmq does
when no version board is reachable)."""

import json
import logging

import pytest

from conftest import SYNTH
from pipeline.datasets import load_dataset
from pipeline.overrides import config_from_argv
from pipeline.runtime.board import SharedBoard, StampBoard
from pipeline.runtime.flow import Flow
from pipeline.runtime.sink import Sink
from pipeline.runtime.source import Source
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel

pytestmark = pytest.mark.timeout(60)


def run_pipeline(tmp_path, board) -> dict:
    cfg = config_from_argv([*SYNTH, "--layers", "64,16,16", "--epochs", "1", "--out",
                            str(tmp_path), "--eval-every", "0", "--probe-every", "0"])
    stream = MemoryChannel(keep=True)
    Source(cfg, load_dataset(cfg.data), Flow(None, stream, lambda: False)).run()
    for k in range(cfg.n_layers):
        inbox, stream = MemoryChannel(stream.out), MemoryChannel(keep=True)
        StageWorker(k, cfg, Flow(inbox, stream, lambda: False), board=board()).run()
    return Sink(cfg, Flow(MemoryChannel(stream.out), None, lambda: False)).run()


@pytest.mark.parametrize("board, exact", [(lambda: SharedBoard([0, 0]), True),
                                          (StampBoard, False)])
def test_summary_says_whether_staleness_was_measured_exactly_and_warns_if_not(
        tmp_path, caplog, board, exact):
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime.sink"):
        summary = run_pipeline(tmp_path, board)
    assert summary["staleness_exact"] is exact
    assert json.loads((tmp_path / "summary.json").read_text())["staleness_exact"] is exact
    warned = [r for r in caplog.records if "lower bounds" in r.getMessage()]
    assert bool(warned) is not exact
