"""The files `ffpipe predict` reads and writes.

In: images as `.npy` (numpy's own format, read without pickle) or IDX (the MNIST
format, gzipped or not): [N, H, W] or [N, D], uint8 0..255 or float in [0, 1]; the model
checks size and scale (`FFModel.inputs`).

Out, by the file's suffix, with SCORE = goodness (FF: per-label goodness) or logit
(backprop: the readout's logits):
    .csv   a header, then one row per image: image, label, SCORE_0..SCORE_{C-1}
           (and head_label when the model has a head)
    .npy   one structured array (no pickle): fields label int64, SCORE float32 [C]
           (head_label int64), so `np.load(F)["label"]`
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, UserError
from pipeline.idx import read_idx

OUT_SUFFIXES = (".csv", ".npy")


def read_images(path: str | Path) -> np.ndarray:
    """The images in `path`: `.npy`, anything else is read as IDX."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; give a .npy or IDX file of images")
    if path.suffix != ".npy":
        try:
            return read_idx(path)
        except DataError as exc:  # its hint says re-download; here the file is the user's
            raise UserError(f"{str(exc).split(';')[0]}; give a .npy or IDX file of images"
                            ) from None
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # else numpy blames pickling for any foreign file
        raise UserError(f"{path}: not a .npy file (no numpy header); save images with "
                        f"numpy.save, or give an IDX file")
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy file ({str(exc).splitlines()[0]})"
                        ) from None
    if images.dtype.names:  # e.g. a predictions file given back as input
        raise UserError(f"{path}: holds a structured array, not images")
    return images


def check_out(path: str | Path) -> Path:
    """Refuse an output name we cannot write before any work is done."""
    path = Path(path)
    if path.suffix not in OUT_SUFFIXES:
        raise UserError(f"--out {path}: give a file ending in .csv or .npy")
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a .csv or .npy file")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: no folder {path.parent}; give a file in an existing "
                        f"folder")
    return path


def write_predictions(path: Path, labels: np.ndarray, scores: np.ndarray,
                      head_labels: np.ndarray | None = None, score_name: str = "goodness") -> None:
    """Labels [N], per-label scores [N, C] (and the head's labels) to `path`."""
    n, c = scores.shape
    if path.suffix == ".npy":
        fields = [("label", np.int64), (score_name, np.float32, (c,))]
        fields += [("head_label", np.int64)] if head_labels is not None else []
        out = np.zeros(n, dtype=fields)
        out["label"], out[score_name] = labels, scores
        if head_labels is not None:
            out["head_label"] = head_labels
        np.save(path, out, allow_pickle=False)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", *(f"{score_name}_{k}" for k in range(c))]
                   + (["head_label"] if head_labels is not None else []))
        for i in range(n):
            w.writerow([i, int(labels[i]), *(f"{v:.6g}" for v in scores[i])]
                       + ([int(head_labels[i])] if head_labels is not None else []))
