"""`python -m pipeline train` with bad input: exit code 2, one stderr line that names
the culprit, no traceback, nothing written.

All cases are started at once by a module fixture (each pays a Python/torch start-up),
then every test checks its own result.
"""

import os
import struct
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(90)

IDX = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
       "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_images(n: int) -> bytes:
    # magic: two zero bytes, 0x08 = unsigned byte, 3 dimensions; then N, 28, 28
    return b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28) + bytes(n * 28 * 28)


def idx_labels(n: int) -> bytes:
    return b"\x00\x00\x08\x01" + struct.pack(">I", n) + bytes(range(n))


def idx_folder(root, train_images: bytes):
    root.mkdir()
    (root / IDX["train_images"]).write_bytes(train_images)
    (root / IDX["train_labels"]).write_bytes(idx_labels(2))
    (root / IDX["test_images"]).write_bytes(idx_images(2))
    (root / IDX["test_labels"]).write_bytes(idx_labels(2))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    bad_magic = idx_folder(base / "bad_magic",
                           b"\x00\x01\x08\x03" + idx_images(2)[4:])  # 2nd byte must be 0
    cases = {
        "epochs": ["--epochs=-1"],
        "optimizer": ["--train.optimizer=rmsprop"],
        "schedule": ["--schedule", "bogus"],
        "layers": ["--model.layers=784"],
        "unknown_key": ["--train.bogus=1"],
        "unknown_section": ["--bogus.epochs=1"],
        "missing_value": ["--epochs"],
        "bad_magic": ["--dataset", "mnist", "--data-dir", str(bad_magic)],
        "no_dir": ["--dataset", "mnist", "--data-dir", str(base / "nonexistent")],
        "mismatch": ["--dataset", "synthetic", "--layers", "784,10,10"],
        "mismatch_one_layer": ["--dataset", "synthetic", "--layers", "784,10"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, argv in cases.items():
        cwd = base / f"cwd_{name}"
        cwd.mkdir()
        procs[name] = (cwd, subprocess.Popen(
            [sys.executable, "-m", "pipeline", "train", *argv], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    try:
        for name, (cwd, p) in procs.items():
            out, err = p.communicate(timeout=60)
            results[name] = (p.returncode, out, err, cwd)
    finally:
        for _, p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def one_line_error(runs, name) -> str:
    rc, out, err, cwd = runs[name]
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ffpipe: error:"), err
    assert "Traceback" not in err
    assert list(cwd.iterdir()) == []  # failed before writing a run folder
    return lines[0]


@pytest.mark.parametrize("name, field", [
    ("epochs", "train.epochs"),
    ("optimizer", "train.optimizer"),
    ("schedule", "train.schedule"),
    ("layers", "model.layers"),
    ("unknown_key", "train.bogus"),
    ("unknown_section", "bogus"),
    ("missing_value", "--epochs"),
])
def test_bad_config_exits_2_with_one_line_naming_the_field(runs, name, field):
    assert field in one_line_error(runs, name)


def test_idx_file_with_wrong_magic_exits_2_naming_the_file(runs):
    line = one_line_error(runs, "bad_magic")
    assert IDX["train_images"] in line and "magic" in line


def test_missing_data_folder_exits_2_naming_the_folder(runs):
    assert "nonexistent" in one_line_error(runs, "no_dir")


def test_layers_not_matching_the_data_exit_2_naming_model_layers(runs):
    line = one_line_error(runs, "mismatch")
    assert "model.layers" in line and "784" in line


def test_single_layer_with_default_skip_exits_2_naming_skip_layers(runs):
    # 784,10 is one FF layer, and the default inference skips layer 0
    assert "model.skip_layers" in one_line_error(runs, "mismatch_one_layer")
