"""`--log.tensorboard`: the TensorBoard mirror of the run records. The old key still works
(one deprecation line), the install hint works from a checkout, and both stage records and
the sink's accuracy records reach the mirror, in the pipelined sink and the single-process
recorder alike. A stand-in SummaryWriter replaces tensorboard, which the tests do not need."""

import logging
import sys

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError, UserError
from pipeline.processes.preflight import check_tensorboard
from pipeline.recorder import Recorder
from pipeline.runtime.flow import Flow
from pipeline.runtime.protocol import start_message
from pipeline.runtime.sink import Sink
from pipeline.tensorboard_mirror import INSTALL_HINT, TensorBoardMirror
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import Message, ctrl

CHECKOUT_INSTALL = "pip install -e '.[tensorboard]'"


class FakeWriter:
    """Records every scalar written to any log folder, as (folder name, tag, value, step)."""
    scalars: list = []
    closed: list = []

    def __init__(self, log_dir):
        self.name = log_dir.rsplit("/", 1)[-1]

    def add_scalar(self, tag, value, step):
        FakeWriter.scalars.append((self.name, tag, value, step))

    def close(self):
        FakeWriter.closed.append(self.name)


@pytest.fixture
def fake_tensorboard(monkeypatch):
    module = type(sys)("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.scalars, FakeWriter.closed = [], []
    return FakeWriter


def cfg_for(tmp_path, *overrides):
    return load_config(None, [("out", str(tmp_path)), ("log.tensorboard", "true"),
                              *overrides])


def test_mirror_without_tensorboard_gives_the_checkout_install_line(monkeypatch, tmp_path):
    # A None entry in sys.modules makes the import fail, as if tensorboard were absent.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError) as exc:
        TensorBoardMirror(tmp_path / "tb", "stage0")
    assert CHECKOUT_INSTALL in str(exc.value) and "\n" not in str(exc.value)


def test_preflight_refuses_log_tensorboard_without_the_package(monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError) as exc:
        check_tensorboard(cfg_for(tmp_path))
    assert str(exc.value) == INSTALL_HINT and CHECKOUT_INSTALL in INSTALL_HINT
    check_tensorboard(load_config(None, [("out", str(tmp_path))]))  # off: nothing to check


def test_old_drift_tensorboard_key_sets_log_tensorboard_with_one_deprecation_line(
        tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(None, [("drift.tensorboard", "true")])
    assert cfg.log.tensorboard is True
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "drift.tensorboard" in lines[0] and "log.tensorboard" in lines[0]
    toml = tmp_path / "old.toml"
    toml.write_text("[drift]\ntensorboard = true\n")
    assert load_config(str(toml)).log.tensorboard is True
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_config(None, [("log.tensorboard", "true")]).log.tensorboard is True
    assert caplog.records == []  # the new key says nothing


def test_mirror_writes_numeric_fields_as_scalars_at_the_source_step(fake_tensorboard, tmp_path):
    mirror = TensorBoardMirror(tmp_path / "stage1", "stage1")
    mirror.write({"kind": "drift", "stage": 1, "step": 10, "source_step": 40, "cos_ref": 0.9,
                  "alarm": True, "staleness": [1, 3], "note": "text", "bad": float("nan")})
    mirror.close()
    assert sorted(fake_tensorboard.scalars) == [
        ("stage1", "stage1/drift/alarm", 1.0, 40), ("stage1", "stage1/drift/cos_ref", 0.9, 40),
        ("stage1", "stage1/drift/staleness", 2.0, 40)]


def test_single_process_recorder_mirrors_stage_and_accuracy_records(fake_tensorboard,
                                                                     tmp_path):
    rec = Recorder(cfg_for(tmp_path, ("model.layers", "8,6,6")), n_layers=2)
    rec.add(1, {"loss": 0.5, "g_pos": 3.0, "g_neg": 1.0})
    rec.log_layer(1, step=20, samples=2000)
    rec.log_eval(20, 2000, {"test_accuracy": 0.75, "head_accuracy": 0.5})
    rec.log_eval(40, 4000, {"test_accuracy": 0.875}, final=True)
    rec.finish({})
    got = {(name, tag, step): value for name, tag, value, step in fake_tensorboard.scalars}
    assert got[("sink", "sink/eval/test_accuracy", 20)] == 0.75
    assert got[("sink", "sink/eval/head_accuracy", 20)] == 0.5
    assert got[("sink", "sink/eval/test_accuracy", 40)] == 0.875
    assert got[("stage1", "stage1/train/loss", 20)] == 0.5
    assert not any(tag.endswith("/final") for _, tag, _ in got)  # a flag, not a curve
    assert sorted(fake_tensorboard.closed) == ["sink", "stage0", "stage1"]


def eval_message(eval_id: int, step: int, labels: list[int], correct: list[bool],
                 classes: int = 3, final: bool = False) -> Message:
    """One chunk of a streamed evaluation whose argmax is the label where `correct`."""
    scores = torch.zeros(len(labels), classes)
    for i, (y, ok) in enumerate(zip(labels, correct)):
        scores[i, y if ok else (y + 1) % classes] = 1.0
    return Message("eval", meta={"eval_id": eval_id, "chunk": 0, "n_chunks": 1, "step": step,
                                 "final": final},
                   tensors={"y": torch.tensor(labels), "acc": scores.reshape(-1)})


def test_pipelined_sink_mirrors_its_accuracy_records(fake_tensorboard, tmp_path):
    cfg = cfg_for(tmp_path, ("model.layers", "8,6,6"))
    inbox = MemoryChannel([
        start_message(classes=3, total_samples=400, done_samples=0, step=0),
        eval_message(0, 2, [0, 1, 2, 0], [True, False, False, False]),
        eval_message(1, 4, [0, 1, 2, 0], [True, True, True, False], final=True),
        ctrl("stop", step=4, stages=[])])
    Sink(cfg, Flow(inbox, None, lambda: False)).run()
    acc = [(step, value) for name, tag, value, step in fake_tensorboard.scalars
           if tag == "sink/eval/test_accuracy"]
    assert acc == [(2, 0.25), (4, 0.75)]
    assert {name for name, *_ in fake_tensorboard.scalars} == {"sink"}
    assert fake_tensorboard.closed == ["sink"]
    assert (tmp_path / "sink.jsonl").read_text().count('"kind": "eval"') == 2  # JSONL too
