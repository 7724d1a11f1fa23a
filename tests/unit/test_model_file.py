"""The model file without training: a run folder is laid out by hand exactly as a
finished run leaves it (config.json, ckpt/stage{k}.pt with optimizer state, ckpt/head.pt,
summary.json), with seeded, perturbed weights so that labels differ from image to image.
End-to-end runs that write the file themselves are in tests/integration/test_model_runs.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.config import load_config, to_dict
from pipeline.datasets import load_dataset
from pipeline.errors import UserError
from pipeline.evaluation import accuracy
from pipeline.ff import LinearHead, head_features, label_scores, overlay, summed_scores
from pipeline.idx import write_idx
from pipeline.layer_trainer import LayerTrainer
from pipeline.model_file import (MODEL_FILE, evaluate, load_run, predict_main, save_model,
                                 write_run_model)
from pipeline.processes.run_dir import write_run_config
from pipeline.runtime.checkpoint import load_layers, save_layer_states, save_module
from pipeline.schedules import BackpropNet

pytestmark = pytest.mark.timeout(120)

SMALL = [("data.dataset", "synthetic"), ("model.layers", [64, 32, 24, 16]),
         ("model.label_strength", 4.0), ("model.head", True), ("train.epochs", 1)]


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return module


def make_run(folder, *extra, summary: dict | None = None):
    """A finished lockstep-like run folder; returns its config."""
    cfg = load_config(None, [*SMALL, ("out", str(folder)), *extra])
    write_run_config(cfg)
    trainers = [LayerTrainer(k, cfg) for k in range(cfg.n_layers)]
    for k, tr in enumerate(trainers):
        perturbed(tr.layer, k)
    save_layer_states(folder, [tr.state_dict() for tr in trainers])
    if cfg.model.head:
        save_module(folder, "head", perturbed(LinearHead(cfg.model.layers[2:], 10), 9))
    (folder / "summary.json").write_text(json.dumps(
        summary or {"schedule": "lockstep", "dataset": "synthetic", "test_accuracy": 0.5}))
    return cfg


@pytest.fixture(scope="module")
def ds():
    return load_dataset(load_config(None, SMALL).data)


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    return folder, make_run(folder)


def test_model_built_from_a_finished_runs_checkpoints_scores_exactly_like_its_layers(run, ds):
    folder, cfg = run
    model = load_run(folder)
    assert (folder / MODEL_FILE).exists()  # built once, read from then on
    layers, m = load_layers(folder, cfg), cfg.model
    expect = label_scores(layers, ds.x_test, 10, strength=m.label_strength,
                          skip=m.skip_layers, kind=m.goodness)
    assert torch.equal(model.scores(ds.x_test), expect)
    assert len(set(model.predict(ds.x_test).tolist())) > 1  # the weights tell images apart
    head = LinearHead(m.layers[2:], 10)
    head.load_state_dict(torch.load(folder / "ckpt" / "head.pt")["weights"])
    feats = head_features(layers, ds.x_test, 10, m.label_strength, m.normalization)
    assert torch.equal(model.head_scores(ds.x_test), head(feats).detach())


def test_model_file_holds_weights_and_inference_settings_but_no_optimizer_state(run):
    folder, cfg = run
    write_run_model(folder)
    assert "opt" in torch.load(folder / "ckpt" / "stage0.pt")["trainer"]  # it was there
    with safe_open(str(folder / MODEL_FILE), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    expect = {f"layers.{k}.linear.{p}" for k in range(3) for p in ("weight", "bias")}
    assert keys == expect | {"head.linear.weight", "head.linear.bias"}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    w = cfg.model.layers
    assert sum(t.numel() for t in tensors.values()) == sum(
        w[k] * w[k + 1] + w[k + 1] for k in range(3)) + (w[2] + w[3]) * 10 + 10
    assert json.loads(meta["model"]) == to_dict(cfg)["model"]
    assert json.loads(meta["data"]) == {"dataset": "synthetic", "num_classes": 10,
                                        "input_dim": 64, "image_shape": None}
    assert meta["inference"] == "goodness" and meta["ff_pipeline_version"]


def test_weights_are_stored_as_float32_whatever_they_were_trained_in(tmp_path):
    cfg = load_config(None, [*SMALL, ("model.head", False), ("out", str(tmp_path))])
    layers = [LayerTrainer(k, cfg).layer.to(torch.bfloat16).state_dict() for k in range(3)]
    path = save_model(tmp_path / MODEL_FILE, cfg, {"dataset": "synthetic", "num_classes": 10,
                                                   "input_dim": 64, "image_shape": None}, layers)
    model = load_run(path)
    for k, layer in enumerate(model.layers):
        assert layer.linear.weight.dtype == torch.float32
        assert torch.equal(layer.linear.weight, layers[k]["linear.weight"].float())


def test_a_backprop_model_file_predicts_with_its_readout(tmp_path, ds):
    cfg = load_config(None, [*SMALL, ("train.schedule", "backprop"), ("out", str(tmp_path))])
    net = perturbed(BackpropNet(cfg, 10), 3)
    path = save_model(tmp_path / MODEL_FILE, cfg, {"dataset": "synthetic", "num_classes": 10,
                                                   "input_dim": 64, "image_shape": None},
                      [layer.state_dict() for layer in net.layers],
                      readout=net.readout.state_dict())
    model = load_run(path)
    assert model.inference == "readout" and model.head is None
    with torch.no_grad():
        logits = net(overlay(ds.x_test, None, 10, cfg.model.label_strength))
    assert torch.equal(model.scores(ds.x_test), logits)
    assert torch.equal(model.predict(ds.x_test), logits.argmax(1))
    with pytest.raises(UserError, match="no per-layer goodness"):
        model.layer_scores(ds.x_test)


def test_uint8_images_are_scaled_like_the_training_data_and_numpy_is_accepted(run, ds):
    model = load_run(run[0])
    u8 = (ds.x_test[:50].numpy() * 255).round().astype(np.uint8)
    as_float = torch.from_numpy(u8).float() / 255
    assert torch.equal(model.scores(u8), model.scores(as_float))
    assert torch.equal(model.scores(as_float.numpy()), model.scores(as_float))


def one_line_error(call) -> str:
    with pytest.raises(UserError) as exc:
        call()
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_images_of_another_size_shape_or_scale_are_refused_in_one_line(tmp_path, run, ds):
    model = load_run(run[0])
    assert "65 values" in one_line_error(lambda: model.scores(torch.zeros(3, 65)))
    assert "[0, 1]" in one_line_error(lambda: model.scores(ds.x_test[:3] * 2))
    assert "nan" in one_line_error(lambda: model.scores(ds.x_test[:3] * np.nan))
    assert "int16" in one_line_error(lambda: model.scores(np.zeros((3, 64), np.int16)))
    # a model that knows its images are 8x8 refuses 4x16 images of as many pixels
    cfg = load_config(None, [*SMALL, ("model.head", False), ("out", str(tmp_path))])
    square = save_model(tmp_path / MODEL_FILE, cfg, {"dataset": "digits", "num_classes": 10,
                                                     "input_dim": 64, "image_shape": [8, 8]},
                        [LayerTrainer(k, cfg).layer.state_dict() for k in range(3)])
    digits = load_run(square)
    assert "4x16" in one_line_error(lambda: digits.scores(torch.zeros(3, 4, 16)))
    assert digits.scores(torch.zeros(3, 8, 8)).shape == (3, 10)


def test_predict_reads_npy_and_idx_and_writes_labels_and_scores_as_csv_or_npy(
        tmp_path, run, ds, capsys):
    folder, _ = run
    model = load_run(folder)
    x = ds.x_test[:40]
    u8 = (x.numpy() * 255).round().astype(np.uint8)
    np.save(tmp_path / "float.npy", x.numpy())
    np.save(tmp_path / "bytes.npy", u8)
    write_idx(tmp_path / "img-idx3-ubyte.gz", u8.reshape(40, 8, 8))
    write_idx(tmp_path / "img-idx3-ubyte", u8.reshape(40, 8, 8))
    inputs = {"float.npy": x, "bytes.npy": u8, "img-idx3-ubyte.gz": u8, "img-idx3-ubyte": u8}
    for name, images in inputs.items():
        expect_labels, expect_scores = model.predict(images), model.scores(images)
        out_npy, out_csv = tmp_path / f"{name}.pred.npy", tmp_path / f"{name}.pred.csv"
        assert predict_main([str(folder), str(tmp_path / name), "--out", str(out_npy)]) == 0
        assert predict_main([str(folder), str(tmp_path / name), "--out", str(out_csv)]) == 0
        got = np.load(out_npy, allow_pickle=False)
        assert got["label"].tolist() == expect_labels.tolist()
        assert np.array_equal(got["goodness"], expect_scores.numpy())
        assert got["head_label"].tolist() == model.head_predict(images).tolist()
        rows = out_csv.read_text().splitlines()
        assert rows[0].split(",")[:3] == ["image", "label", "goodness_0"]
        assert [int(r.split(",")[1]) for r in rows[1:]] == expect_labels.tolist()
        first = np.array([float(v) for v in rows[1].split(",")[2:12]])
        assert np.allclose(first, expect_scores[0].numpy(), rtol=1e-5)
    assert "predicted 40 images" in capsys.readouterr().out


def test_predict_refuses_files_it_cannot_use_before_loading_the_model(tmp_path, run):
    folder, _ = run
    (tmp_path / "text.npy").write_text("not numpy")
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    np.save(tmp_path / "big.npy", np.zeros((3, 28, 28), np.uint8))
    for args, words in [(["text.npy"], "not a .npy file"), (["bad-idx3-ubyte"], "IDX"),
                        (["absent.npy"], "no such file"), (["big.npy"], "28x28"),
                        (["big.npy", "--out", str(tmp_path / "p.txt")], ".csv or .npy")]:
        argv = [str(folder), str(tmp_path / args[0]), *args[1:]]
        assert words in one_line_error(lambda: predict_main(argv))


def test_runs_without_final_weights_and_foreign_files_are_refused_in_one_line(tmp_path):
    assert "no such run folder" in one_line_error(lambda: load_run(tmp_path / "absent"))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert "no config.json" in one_line_error(lambda: load_run(bare))
    starting = tmp_path / "starting"
    write_run_config(load_config(None, [*SMALL, ("out", str(starting))]))
    assert "no weights yet" in one_line_error(lambda: load_run(starting))
    for name, summary in [("live", None), ("stopped", {"test_accuracy": 0.5,
                                                        "interrupted": True})]:
        folder = tmp_path / name
        make_run(folder)
        (folder / "summary.json").unlink()
        if summary:
            (folder / "summary.json").write_text(json.dumps(summary))
        assert "has not finished" in one_line_error(lambda: load_run(folder))
        assert not (folder / MODEL_FILE).exists()
    exiting = tmp_path / "exiting"  # the summary says stage 1 ended at step 7; its ckpt: 0
    make_run(exiting, summary={"test_accuracy": 0.5, "stages": [{"stage": 1, "version": 7}]})
    assert "still be exiting" in one_line_error(lambda: load_run(exiting))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert "safetensors" in one_line_error(lambda: load_run(tmp_path / "junk.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    assert "not an ff-pipeline model" in one_line_error(
        lambda: load_run(tmp_path / "other.safetensors"))
    make_run(tmp_path / "whole")
    with safe_open(str(write_run_model(tmp_path / "whole")), "pt") as f:
        meta, kept = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if "bias" not in k}
    save_file(kept, str(tmp_path / "damaged.safetensors"), metadata=meta)
    assert "do not make a model" in one_line_error(
        lambda: load_run(tmp_path / "damaged.safetensors"))


def test_evaluate_writes_accuracy_by_goodness_and_head_for_the_runs_dataset(run, ds):
    folder, _ = run
    model = load_run(folder)
    r = evaluate(folder)
    assert r["accuracy"] == accuracy(model.predict(ds.x_test), ds.y_test)
    assert r["head_accuracy"] == accuracy(model.head_predict(ds.x_test), ds.y_test)
    assert r["images"] == len(ds.y_test) and r["run_test_accuracy"] == 0.5
    written = json.loads((folder / "evaluate-synthetic.json").read_text())
    assert written["accuracy"] == r["accuracy"]
    train = evaluate(folder, split="train")
    assert train["images"] == len(ds.y_train) and "run_test_accuracy" not in train
    assert (folder / "evaluate-synthetic-train.json").exists()
    digits = evaluate(folder, dataset="digits")  # 8x8 = 64 values: the same input size
    assert digits["dataset"] == "digits" and (folder / "evaluate-digits.json").exists()


def test_evaluate_reports_each_layers_goodness_alone(run, ds):
    folder, cfg = run
    model = load_run(folder)
    per = model.layer_scores(ds.x_test)
    assert per.shape == (len(ds.x_test), cfg.n_layers, 10)
    # the sum over layers skip_layers.. is exactly what inference ranks labels by
    assert torch.equal(summed_scores(per, cfg.model.skip_layers), model.scores(ds.x_test))
    layers = load_layers(folder, cfg)
    for k in range(cfg.n_layers):  # layer k alone: the scores of a net cut after it, skip k
        alone = label_scores(layers[:k + 1], ds.x_test, 10, strength=cfg.model.label_strength,
                             skip=k, kind=cfg.model.goodness)
        assert torch.equal(per[:, k], alone)
    r = evaluate(folder, write=False)
    assert r["layer_accuracy"] == [accuracy(per[:, k].argmax(dim=1), ds.y_test)
                                   for k in range(cfg.n_layers)]


def test_unit_activity_counts_the_units_that_never_fire(run, ds):
    folder, cfg = run
    model = load_run(folder)
    layer = model.layers[0]
    with torch.no_grad():  # unit 3 can never fire: no weights, a negative bias
        layer.linear.weight[3] = 0.0
        layer.linear.bias[3] = -1.0
    x, y = ds.x_test[:300], ds.y_test[:300]
    got = model.unit_activity(x, y)
    h = overlay(model.inputs(x), y, 10, cfg.model.label_strength)
    for k, layer in enumerate(model.layers):  # the same by hand, one pass, no chunks
        h = layer(h)
        fired = h > 0
        assert got[k]["units"] == cfg.model.layers[k + 1]
        assert got[k]["dead"] == int((~fired.any(dim=0)).sum())
        assert got[k]["active_fraction"] == pytest.approx(float(fired.float().mean()))
    assert got[0]["dead"] >= 1
    r = evaluate(folder, write=False)
    assert [u["units"] for u in r["units"]] == cfg.model.layers[1:]


def test_the_commands_exit_2_with_one_line_on_stderr(tmp_path, run):
    np.save(tmp_path / "big.npy", np.zeros((3, 28, 28), np.uint8))
    write_run_model(run[0])  # else building it logs a line first
    cases = [["predict", str(run[0]), str(tmp_path / "big.npy")],
             ["evaluate", str(tmp_path / "absent")]]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cases]
    for p in procs:
        _, err = p.communicate(timeout=90)
        assert p.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("ffpipe: error:")


def test_overwrite_clears_the_model_file_and_evaluations_of_the_earlier_run(tmp_path):
    from pipeline.processes.run_dir import claim
    out = tmp_path / "run"
    out.mkdir()
    for name in (MODEL_FILE, "evaluate-synthetic.json", "notes.txt"):
        (out / name).write_text("x")
    cfg = load_config(None, [*SMALL, ("out", str(out))])
    assert "holds" in one_line_error(lambda: claim(cfg))  # another run's files: refused
    cfg.pipeline.overwrite = True
    claim(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the user's file stays
