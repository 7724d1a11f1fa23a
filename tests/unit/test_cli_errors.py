"""`python -m pipeline ...` with bad input: exit code 2, one stderr line that names the
culprit, no traceback, nothing written, before any process starts (a table of cases).

All cases are started at once by a module fixture (each pays a Python/torch start-up),
then every test checks its own result.
"""

import os
import struct
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)  # ~36 processes at once on a small runner

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


def prepared_folders(base):
    """Run folders a user may point --out at, each in a state a new run must refuse."""
    import torch
    finished = base / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    (finished / "config.json").write_text("{}")
    other_model = base / "other_model"  # checkpoints of a 64x10 layer, asked for 64x12
    (other_model / "ckpt").mkdir(parents=True)
    torch.save({"trainer": {"shape": [64, 10]}, "samples": 5, "source_step": 0},
               other_model / "ckpt" / "stage0.pt")
    more_layers = base / "more_layers"  # two stages' checkpoints, one layer asked for
    (more_layers / "ckpt").mkdir(parents=True)
    for k in (0, 1):
        torch.save({"trainer": {"shape": [64, 10]}, "samples": 5, "source_step": 0},
                   more_layers / "ckpt" / f"stage{k}.pt")
    # a 1-layer run whose checkpoint fits the first of 2 asked-for layers: the recorded
    # config tells it from a run whose second stage died before its first checkpoint
    fewer_layers = base / "fewer_layers"
    (fewer_layers / "ckpt").mkdir(parents=True)
    (fewer_layers / "config.json").write_text('{"model": {"layers": [64, 12]}}')
    torch.save({"trainer": {"shape": [64, 12]}, "samples": 5, "source_step": 0},
               fewer_layers / "ckpt" / "stage0.pt")
    # a checkpoint that would run code if unpickled: here, create a file beside it
    code_ckpt = base / "code_ckpt"
    (code_ckpt / "ckpt").mkdir(parents=True)
    torch.save({"trainer": OpensAFile(str(code_ckpt / "ran")), "samples": 5,
                "source_step": 0}, code_ckpt / "ckpt" / "stage0.pt")
    # the same model trained with another learning rate: resuming would mix two configs
    other_lr = base / "other_lr"
    (other_lr / "ckpt").mkdir(parents=True)
    (other_lr / "config.json").write_text(
        '{"data": {"augment": "auto"}, "model": {"layers": [64, 12]}, "train": {"lr": 0.001}}')
    torch.save({"trainer": {"shape": [64, 12]}, "samples": 5, "source_step": 0},
               other_lr / "ckpt" / "stage0.pt")
    (base / "a_file").write_text("not a folder")
    (base / "empty").mkdir()
    return finished, other_model, more_layers, fewer_layers, code_ckpt


class OpensAFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):  # what an unpickler would call: open(path, "w")
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import socket
    import torch
    base = tmp_path_factory.mktemp("cli")
    bad_magic = idx_folder(base / "bad_magic",
                           b"\x00\x01\x08\x03" + idx_images(2)[4:])  # 2nd byte must be 0
    finished, other_model, more_layers, fewer_layers, code_ckpt = prepared_folders(base)
    taken = socket.create_server(("127.0.0.1", 0))  # a port someone else listens on
    port = taken.getsockname()[1]
    synth = ["--dataset", "synthetic", "--layers", "64,12", "--model.skip_layers=0"]
    cases = {
        "epochs": ["train", "--epochs=-1"],
        "optimizer": ["train", "--train.optimizer=rmsprop"],
        "schedule": ["train", "--schedule", "bogus"],
        "layers": ["train", "--model.layers=784"],
        "unknown_key": ["train", "--train.bogus=1"],
        "unknown_section": ["train", "--bogus.epochs=1"],
        "missing_value": ["train", "--epochs"],
        "bad_magic": ["train", "--dataset", "mnist", "--data-dir", str(bad_magic)],
        "no_dir": ["train", "--dataset", "mnist", "--data-dir", str(base / "nonexistent")],
        "mismatch": ["train", "--dataset", "synthetic", "--layers", "784,10,10"],
        "mismatch_one_layer": ["train", "--dataset", "synthetic", "--layers", "784,10"],
        "out_is_file": ["train", *synth, "--out", str(base / "a_file")],
        "out_finished": ["train", *synth, "--out", str(finished)],
        "resume_nothing": ["train", *synth, "--out", str(base / "empty"), "--resume"],
        "resume_shapes": ["train", *synth, "--out", str(other_model), "--resume"],
        "resume_layers": ["train", *synth, "--out", str(more_layers), "--resume"],
        "resume_fewer_layers": ["train", "--dataset", "synthetic", "--layers", "64,12,12",
                                "--out", str(fewer_layers), "--resume"],
        "resume_code": ["train", *synth, "--out", str(code_ckpt), "--resume"],
        "resume_settings": ["train", *synth, "--lr", "0.01", "--out", str(base / "other_lr"),
                            "--resume"],
        "resume_lockstep": ["train", *synth, "--schedule", "lockstep", "--out", str(finished),
                            "--resume"],
        "port_in_use": ["train", *synth, "--transport", "zmq",
                        "--net.base_port", str(port - 1)],
        "board_in_use": ["train", *synth, "--transport", "zmq", "--net.base_port", str(port)],
        "cuda_stage": ["train", *synth, "--devices", "cuda:0"],
        "cuda_index": ["train", *synth, "--devices", "cuda:99"],
        "cuda_lockstep": ["train", *synth, "--schedule", "lockstep", "--train.device", "cuda"],
        "tensorboard": ["train", *synth, "--log.tensorboard=true"],
        "export_digits": ["data", "export-idx", str(base / "export"), "--dataset", "digits"],
        "bench_sizes": ["bench", "transport", "--sizes", "64KB"],
        "bench_unknown": ["bench", "transport", "--bogus", "1"],
        "bench_pipeline_unknown": ["bench", "pipeline", "--bogus", "1"],
        "worker_role": ["worker", "--role", "boss", "--transport", "zmq"],
        "bench_missing": ["bench"],
        "drift_unknown": ["drift", str(finished), "--bogus"],
        "drift_missing": ["drift"],
        "keys_missing": ["keys"],
        "data_unknown": ["data", "export-idx", str(base / "export"), "--bogus"],
        "compare_no_value": ["compare", "--seeds"],
        "unknown_command": ["bogus"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = {p: sorted(p.rglob("*")) for p in base.iterdir() if p.is_dir()}
    procs = {}
    for name, argv in cases.items():
        cwd = base / f"cwd_{name}"
        cwd.mkdir()
        procs[name] = (cwd, subprocess.Popen(
            [sys.executable, "-m", "pipeline", *argv], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    try:
        for name, (cwd, p) in procs.items():
            out, err = p.communicate(timeout=150)
            results[name] = (p.returncode, out, err, cwd)
    finally:
        taken.close()
        for _, p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    after = {p: sorted(p.rglob("*")) for p in before}
    results["untouched"] = [p.name for p in before if before[p] != after[p]]
    results["cuda"] = torch.cuda.is_available()
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


@pytest.mark.parametrize("name, words", [
    ("out_is_file", ["a_file", "is a file"]),
    ("out_finished", ["finished run", "--resume", "--overwrite"]),
    ("resume_nothing", ["no checkpoints", "--resume=auto"]),
    ("resume_shapes", ["stage0.pt", "64x10", "64x12"]),
    ("resume_layers", ["stage1.pt", "more layers"]),
    ("resume_fewer_layers", ["64,12", "64,12,12"]),
    ("resume_code", ["stage0.pt", "cannot load"]),  # never unpickled: nothing ran
    ("resume_settings", ["train.lr: 0.001 -> 0.01", "other_lr/config.json --resume"]),
    ("resume_lockstep", ["lockstep", "does not resume"]),
    ("port_in_use", ["in use", "stage 0"]),
    ("board_in_use", ["in use", "version board"]),
    ("export_digits", ["digits", "28x28"]),
    ("bench_sizes", ["--sizes", "64KB"]),
    ("bench_unknown", ["--bogus"]),
    ("bench_pipeline_unknown", ["bogus"]),
    ("worker_role", ["--role"]),
    ("bench_missing", ["ffpipe bench", "required"]),
    ("drift_unknown", ["ffpipe drift", "--bogus"]),
    ("drift_missing", ["ffpipe drift", "required"]),
    ("keys_missing", ["ffpipe keys", "required"]),
    ("data_unknown", ["ffpipe data", "--bogus"]),
    ("compare_no_value", ["ffpipe compare", "--seeds"]),
    ("unknown_command", ["bogus", "train"]),
])
def test_mistakes_are_caught_before_any_process_starts_in_one_line(runs, name, words):
    line = one_line_error(runs, name)
    assert all(w in line for w in words), line


@pytest.mark.parametrize("name, key", [("cuda_stage", "pipeline.devices"),
                                       ("cuda_index", "pipeline.devices"),
                                       ("cuda_lockstep", "train.device")])
def test_cuda_asked_for_without_that_device_exits_2_naming_the_key(runs, name, key):
    if runs["cuda"] and name != "cuda_index":
        pytest.skip("this machine has a GPU")
    assert key in one_line_error(runs, name)


def test_tensorboard_asked_for_without_it_exits_2_with_the_install_line(runs):
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    assert "pip install -e '.[tensorboard]'" in one_line_error(runs, "tensorboard")


def test_a_refused_run_leaves_every_prepared_folder_as_it_was(runs):
    assert runs["untouched"] == []


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
