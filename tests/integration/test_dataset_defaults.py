"""`ffpipe train --dataset synthetic` and `--dataset digits` run and learn with no other
option than a short budget: the first width of --layers follows the data, and each
dataset's own defaults (pipeline/dataset_info.py) make it learn. Run without a terminal,
so the progress comes as timestamped lines; both runs start at once (a module fixture)."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from conftest import Procs
from pipeline.dataset_info import DATASET_INPUT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DATASETS = ("synthetic", "digits")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("defaults")
    procs = Procs(uuid.uuid4().hex)
    try:
        started = {name: procs.ffpipe(["train", "--dataset", name, "--epochs", "2",
                                       "--out", str(base / name)]) for name in DATASETS}
        results = {}
        for name, p in started.items():
            out, err = p.communicate(timeout=560)
            results[name] = (p.returncode, out, err, base / name)
        results["left"] = procs.alive()
        return results
    finally:
        procs.cleanup()


@pytest.mark.parametrize("name", DATASETS)
def test_a_dataset_trains_and_learns_with_no_other_option(runs, name):
    code, out, err, run = runs[name]
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["layers"][0] == DATASET_INPUT[name]
    assert config["train"]["schedule"] == "pipelined"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5  # chance is 0.1
    assert runs["left"] == []


@pytest.mark.parametrize("name", DATASETS)
def test_progress_without_a_terminal_is_timestamped_lines_naming_the_phase(runs, name):
    err = runs[name][2]
    lines = [line for line in err.splitlines() if re.match(r"\d\d:\d\d:\d\d pipelined", line)]
    assert " pipelined: starting 5 processes" in lines[0]  # before any process started
    phases = " ".join(lines)
    for words in ("pipelined starting processes", "pipelined epoch 1/2", "ETA",
                  "pipelined final evaluation", "pipelined done", "loss", "acc"):
        assert words in phases, (words, err)
