"""Real runs end with a model file whose predictions are those of the run's own final
evaluation: lockstep and backprop in this process, pipelined through real processes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import SYNTH
from pipeline import train
from pipeline.config import from_dict
from pipeline.datasets import load_dataset
from pipeline.evaluation import accuracy
from pipeline.ff import label_scores
from pipeline.model_file import MODEL_FILE, evaluate_main, load_run
from pipeline.overrides import config_from_argv
from pipeline.runtime.checkpoint import load_layers

pytestmark = pytest.mark.timeout(240)


def run_here(out, schedule: str, *extra: str) -> dict:
    cfg = config_from_argv([*SYNTH, "--schedule", schedule, "--epochs", "2", "--out", str(out),
                            "--probe-every", "0", "--train.threads=1", *extra])
    return train(cfg)


def test_lockstep_model_file_predicts_what_its_final_evaluation_scored(tmp_path):
    out = tmp_path / "lockstep"
    summary = run_here(out, "lockstep", "--head")
    cfg = from_dict(json.loads((out / "config.json").read_text()))
    ds = load_dataset(cfg.data)
    model = load_run(out)
    # The final evaluation (pipeline.evaluation) scored the test set with these layers:
    m = cfg.model
    own = label_scores(load_layers(out, cfg), ds.x_test, ds.num_classes,
                       strength=m.label_strength, skip=m.skip_layers, kind=m.goodness)
    assert torch.equal(model.scores(ds.x_test), own)
    assert accuracy(model.predict(ds.x_test), ds.y_test) == summary["test_accuracy"]
    assert accuracy(model.head_predict(ds.x_test), ds.y_test) == summary["head_accuracy"]


def test_backprop_model_file_predicts_with_its_readout(tmp_path):
    out = tmp_path / "backprop"
    summary = run_here(out, "backprop")
    ds = load_dataset(from_dict(json.loads((out / "config.json").read_text())).data)
    model = load_run(out)
    assert model.inference == "readout" and model.readout is not None
    assert accuracy(model.predict(ds.x_test), ds.y_test) == summary["test_accuracy"]


def tensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()} | {"meta": f.metadata()}


@pytest.mark.slow
def test_pipelined_model_file_predicts_what_the_sink_scored_and_can_be_rebuilt(
        procs, tmp_path, capsys):
    out = tmp_path / "pipelined"
    # float32: a bf16 product's rounding depends on the thread count (test_precision.py)
    code, _, err = procs.run(["train", *SYNTH, "--epochs", "2", "--head",
                              "--train.precision", "fp32", "--out", str(out)],
                             timeout=200)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    ds = load_dataset(from_dict(json.loads((out / "config.json").read_text())).data)
    model = load_run(out)
    streamed = torch.load(out / "eval_scores.pt", weights_only=True)  # the sink's
    scores = model.scores(ds.x_test)
    # 100-image eval messages against one 400-image pass: float sums may round apart
    torch.testing.assert_close(scores, streamed, rtol=1e-5, atol=1e-3)
    assert torch.equal(scores.argmax(1), streamed.argmax(1))
    assert accuracy(model.predict(ds.x_test), ds.y_test) == summary["test_accuracy"]
    assert accuracy(model.head_predict(ds.x_test), ds.y_test) == summary["head_accuracy"]
    # as compose leaves a run: no model file; `ffpipe evaluate` builds the same one
    first = tensors(out / MODEL_FILE)
    (out / MODEL_FILE).unlink()
    assert evaluate_main([str(out)]) == 0
    assert f"{100 * summary['test_accuracy']:.2f}%" in capsys.readouterr().out
    again = tensors(out / MODEL_FILE)
    assert first.keys() == again.keys() and first.pop("meta") == again.pop("meta")
    assert all(torch.equal(first[k], again[k]) for k in first)
