"""A trained run as one reusable file, `RUN_DIR/model.safetensors`, and what reads it.

The file holds the float32 weights (FF layers, the linear head if the run had one,
backprop's readout) in safetensors, no optimizer state, and in the safetensors metadata
everything inference needs: the model config (widths, normalization, label overlay
strength, goodness, skip_layers), the dataset's name, image shape and number of classes,
the schedule and the ff-pipeline version. safetensors, not torch.save: loading it runs
no code, and other tools read it without this package.

Who writes it, so that it holds exactly the run's final weights:
    lockstep, sequential, backprop   the schedule itself, at its end (`save_model`)
    pipelined (ffpipe train)         the launcher, after every process has exited, from
                                     the stages' final checkpoints (`write_run_model`)
    compose, torchrun scripts,       nobody during the run: the first `load_run`,
    ffpipe worker                    `ffpipe evaluate` or `ffpipe predict` builds it
                                     from the same checkpoints once the run has finished

    load_run(run_dir) -> FFModel     predict / scores / head_predict (`pipeline.ff_model`)
    evaluate(run_dir, dataset=...)   accuracy on any dataset with the model's image size
    evaluate_main / predict_main     `ffpipe evaluate`, `ffpipe predict`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipeline import precision
from pipeline.config import DataConfig, RunConfig, from_dict, load_config, to_dict
from pipeline.dataset_info import DATASETS
from pipeline.datasets import Dataset, load_dataset
from pipeline.errors import UserError
from pipeline.evaluation import accuracy
from pipeline.ff import summed_scores
from pipeline.ff_model import FFModel
from pipeline.prediction_files import check_out, read_images, write_predictions
from pipeline.runlog import write_json_atomic
from pipeline.runtime import checkpoint

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
FORMAT, FORMAT_VERSION = "ff-pipeline-model", "1"


def package_version() -> str:
    try:
        return version("ff-pipeline")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def data_info(ds: Dataset) -> dict:
    """What the model file records about the data it was trained on."""
    return {"dataset": ds.name, "num_classes": ds.num_classes, "input_dim": ds.input_dim,
            "image_shape": list(ds.image_shape) if ds.image_shape else None}


# ---- writing -------------------------------------------------------------------------

def _float32(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    # float32 whatever the run computed in (train.precision): one file format for all; the
    # run's precision is in the metadata, and inference multiplies in it (FFModel).
    return {f"{prefix}{name}": t.detach().to("cpu", torch.float32).contiguous().clone()
            for name, t in state.items()}


def save_model(path: str | Path, cfg: RunConfig, data: dict, layers: list[dict],
               head: dict | None = None, readout: dict | None = None) -> Path:
    """Write the model file (atomically: temp file + rename). `layers`: each FF layer's
    `state_dict()`; `head`: the LinearHead's; `readout`: backprop's output layer's (its
    presence makes the file's inference `readout` instead of `goodness`)."""
    path = Path(path)
    tensors = {}
    for k, state in enumerate(layers):
        tensors.update(_float32(state, f"layers.{k}."))
    if head is not None:
        tensors.update(_float32(head, "head."))
    if readout is not None:
        tensors.update(_float32(readout, "readout."))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "ff_pipeline_version": package_version(),
            "inference": "readout" if readout is not None else "goodness",
            "model": json.dumps(to_dict(cfg)["model"]), "data": json.dumps(data),
            "run": json.dumps({"schedule": cfg.train.schedule, "seed": cfg.train.seed,
                               "epochs": cfg.train.epochs,
                               "precision": precision.of_run(cfg),
                               "transport": cfg.pipeline.transport})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def run_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a run folder (no config.json); give the folder "
                        f"`ffpipe train --out` wrote") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it ({type(exc).__name__})") from None
    return from_dict(table)


def finished_summary(run_dir: Path) -> dict | None:
    """summary.json of a run that ran to its final evaluation; None otherwise."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("test_accuracy") is None \
            or summary.get("interrupted"):
        return None
    return summary


def _check_final(run_dir: Path, summary: dict) -> None:
    """A pipelined stage writes its checkpoint just after forwarding the stop, so a
    checkpoint older than the summary's final version is still being written."""
    for s in summary.get("stages") or []:
        state = checkpoint.load(checkpoint.ckpt_path(run_dir, f"stage{s.get('stage')}"))
        have = state and state.get("trainer", {}).get("version")
        if have is not None and s.get("version") is not None and have != s["version"]:
            raise UserError(f"{run_dir}/ckpt/stage{s['stage']}.pt is at step {have}, the run "
                            f"ended at {s['version']}: a stage may still be exiting; try "
                            f"again in a moment")


def write_run_model(run_dir: str | Path, cfg: RunConfig | None = None,
                    data: dict | None = None) -> Path:
    """Build RUN_DIR/model.safetensors from a finished run's checkpoints (ckpt/stage{k}.pt,
    ckpt/head.pt, ckpt/readout.pt). `data`: `data_info` of the run's dataset; loaded from
    the run's config when not given (the file records the image shape)."""
    run = Path(run_dir)
    cfg = cfg or run_config(run)
    if not (run / "ckpt" / "stage0.pt").exists():
        raise UserError(f"{run} has no weights yet (no {MODEL_FILE}, no ckpt/stage0.pt): "
                        f"the run has not trained; wait for it or train it")
    summary = finished_summary(run)
    if summary is None:
        raise UserError(f"{run} has not finished (no final summary.json), so it has no "
                        f"{MODEL_FILE}; let it finish (a stopped pipelined run continues "
                        f"with `ffpipe train --config {run}/config.json --resume`)")
    _check_final(run, summary)
    layers = checkpoint.layer_states(run, cfg.model.layers)
    readout = head = None
    if cfg.train.schedule == "backprop":
        readout = checkpoint.load_module_state(run, "readout")
        if readout is None:
            raise UserError(f"{run}: backprop run without ckpt/readout.pt (written since "
                            f"ff-pipeline wrote model files); its model cannot be rebuilt")
    elif cfg.model.head:
        head = checkpoint.load_module_state(run, "head")
        if head is None:
            log.warning("%s: no ckpt/head.pt; the model file has no head", run)
    if data is None:
        try:
            data = data_info(load_dataset(cfg.data))
        except UserError as exc:
            raise UserError(f"building {run}/{MODEL_FILE} needs the run's dataset (for its "
                            f"image shape and classes): {exc}") from None
    path = save_model(run / MODEL_FILE, cfg, data, layers, head=head, readout=readout)
    log.info("wrote %s (from the run's checkpoints)", path)
    return path


# ---- reading -------------------------------------------------------------------------

def load_model(path: str | Path, device: str = "cpu") -> FFModel:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise UserError(f"{path}: not a readable safetensors file "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an ff-pipeline model file (its metadata has no "
                        f"format '{FORMAT}')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: model file format {meta.get('format_version')}, this "
                        f"ff-pipeline ({package_version()}) reads {FORMAT_VERSION}; "
                        f"use the version that wrote it ({meta.get('ff_pipeline_version')})")
    try:
        model = FFModel(tensors, meta, path)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:  # edited or damaged
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{path}: its tensors and metadata do not make a model ({reason}); "
                        f"rebuild it: delete it and run `ffpipe evaluate` on its run") from None
    return model.to(device)


def load_run(run_dir: str | Path, device: str = "cpu") -> FFModel:
    """The trained model of a run folder (or of a model file given directly). A finished
    run without a model file (compose, torchrun scripts) gets one built from its
    checkpoints first."""
    path = Path(run_dir)
    if path.is_file():
        return load_model(path, device)
    if not path.is_dir():
        raise UserError(f"{path}: no such run folder")
    if not (path / MODEL_FILE).exists():
        write_run_model(path)
    return load_model(path / MODEL_FILE, device)


# ---- evaluation ------------------------------------------------------------------------

def dataset_defaults(name: str) -> DataConfig:
    """A dataset's data settings as a run of it gets them (its own train_size, ...)."""
    return load_config(None, [("data.dataset", name)]).data


def evaluation_data(run_dir: Path, model: FFModel, dataset: str | None,
                    data_dir: str | None) -> DataConfig:
    """The run's own data settings (same split, same limits) when evaluating on its own
    dataset; the defaults of another dataset otherwise."""
    own = run_config(run_dir).data if (run_dir / "config.json").exists() else \
        dataset_defaults(model.data["dataset"])
    data = own if dataset in (None, own.dataset) else dataset_defaults(dataset)
    if data_dir:
        data.data_dir = data_dir
    return data


def evaluate(run_dir: str | Path, dataset: str | None = None, data_dir: str | None = None,
             split: str = "test", device: str = "cpu", write: bool = True) -> dict:
    """Accuracy of a run's model on `dataset`'s `split` (default: the run's own dataset, its
    test split): by goodness (by the readout for backprop) and by the head if there is
    one, and the run's own final accuracy where it is comparable. With `write`, also
    RUN_DIR/evaluate-<dataset>[-train].json (its path in `written_to`)."""
    if split not in ("test", "train"):
        raise UserError(f"split {split!r}: use test or train")
    run = Path(run_dir)
    model = load_run(run, device)
    folder = run if run.is_dir() else run.parent
    data = evaluation_data(folder, model, dataset, data_dir)
    ds = load_dataset(data)
    if ds.num_classes != model.num_classes:
        raise UserError(f"{ds.name} has {ds.num_classes} classes, the model "
                        f"{model.num_classes}; evaluate on a dataset with the same labels")
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    if ds.image_shape and len(x):
        x = x.view(len(x), *ds.image_shape)  # so a 28x28 model refuses 14x56 images
    result = {"run": str(run), "dataset": ds.name, "split": split, "images": len(y),
              "inference": model.inference}
    if model.readout is None:  # one pass gives each layer's goodness and their sum
        per = model.layer_scores(x)
        result["accuracy"] = accuracy(
            summed_scores(per, model.config.skip_layers).argmax(dim=1), y)
        result["layer_accuracy"] = [accuracy(per[:, k].argmax(dim=1), y)
                                    for k in range(per.shape[1])]
        result["units"] = model.unit_activity(x, y)
    else:
        result["accuracy"] = accuracy(model.predict(x), y)
    if model.head is not None:
        result["head_accuracy"] = accuracy(model.head_predict(x), y)
    summary = finished_summary(folder)
    if summary and split == "test" and dataset in (None, summary.get("dataset")):
        result["run_test_accuracy"] = summary["test_accuracy"]  # to compare with
    result["ff_pipeline_version"] = package_version()
    if write:
        path = folder / f"evaluate-{ds.name}{'' if split == 'test' else '-' + split}.json"
        write_json_atomic(path, result)
        result["written_to"] = str(path)
    return result


# ---- command line ----------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except None: those options say in their help what they do
    when not given."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def device_arg(value: str) -> str:
    if not (value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())):
        raise argparse.ArgumentTypeError(f"{value!r}: use cpu, cuda or cuda:N")
    if value != "cpu" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value!r}: no CUDA device here; use cpu")
    return value


def _parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=example,
                                formatter_class=HelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a run folder (`ffpipe train --out`), or a model.safetensors file")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="where to compute: cpu, cuda, cuda:N")
    return p


def evaluate_main(argv: list[str]) -> int:
    p = _parser("ffpipe evaluate", "Accuracy of a trained run on a dataset of the same image "
                "size: by goodness (by the readout for backprop), by each FF layer's "
                "goodness alone, and by the linear head; and how many of each FF "
                "layer's units never fire on those images.",
                "example: ffpipe evaluate runs/first --dataset mnist --data-dir ~/data/mnist")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="dataset to evaluate on (default: the run's own, with its split)")
    p.add_argument("--data-dir", default=None,
                   help="folder of the IDX files for mnist / fashion-mnist (default: the "
                        "run's own --data-dir)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which part of the dataset")
    a = p.parse_args(argv)
    r = evaluate(a.run_dir, a.dataset, a.data_dir, a.split, a.device)
    how = "readout" if r["inference"] == "readout" else "goodness"
    print(f"{r['dataset']} {r['split']} split, {r['images']} images: accuracy by {how} "
          f"{100 * r['accuracy']:.2f}%" + (f", by head {100 * r['head_accuracy']:.2f}%"
                                            if "head_accuracy" in r else ""))
    if "layer_accuracy" in r:
        print("each layer's goodness alone: " + ", ".join(
            f"layer {k} {100 * a:.2f}%" for k, a in enumerate(r["layer_accuracy"])))
    if "units" in r:
        print("units never active (dead) on these images, per layer: " + ", ".join(
            f"{u['dead']}/{u['units']}" for u in r["units"]) + "; mean fraction active: "
            + ", ".join(f"{u['active_fraction']:.3f}" for u in r["units"]))
    if "run_test_accuracy" in r:
        print(f"the run's own final evaluation: {100 * r['run_test_accuracy']:.2f}%")
    print(f"wrote {r['written_to']}")
    return 0


def predict_main(argv: list[str]) -> int:
    p = _parser("ffpipe predict", "Predicted labels and per-label scores (goodness; "
                "logits for backprop) for images in a .npy or IDX file (gzipped or not): "
                "[N, H, W] or [N, D], uint8 0..255 or float in [0, 1].",
                "example: ffpipe predict runs/first t10k-images-idx3-ubyte.gz --out preds.npy")
    p.add_argument("file", metavar="FILE", help="images: .npy, or IDX (.gz or not)")
    p.add_argument("--out", default="predictions.csv",
                   help="where the predictions go: .csv (a row per image) or .npy (a "
                        "structured array)")
    a = p.parse_args(argv)
    out = check_out(a.out)
    images = read_images(a.file)
    model = load_run(a.run_dir, a.device)
    scores = model.scores(images)
    head = model.head_predict(images).numpy() if model.head is not None else None
    name = "logit" if model.inference == "readout" else "goodness"
    write_predictions(out, scores.argmax(1).numpy(), scores.numpy(), head, name)
    print(f"predicted {len(scores)} images ({model}) -> {out}")
    return 0
