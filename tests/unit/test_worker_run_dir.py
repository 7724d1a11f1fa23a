"""The run-folder rules a lone `ffpipe worker` applies (compose, launch/zmq_local.sh): a
finished run is never written into (a re-used RUN_NAME), `--resume=auto` resumes only what
this worker has files of, so a fresh process does not call itself resumed; and
`--resume=auto` of `ffpipe train` does not continue a finished run either."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.processes.run_dir import claim, claim_for_worker, finished_run

pytestmark = pytest.mark.timeout(60)


def cfg_for(out, resume: str):
    return load_config(None, [("model.layers", "8,6,4"), ("out", str(out)),
                              ("pipeline.transport", "zmq"), ("pipeline.resume", resume)])


def checkpoint(out, name: str, shape=(8, 6)) -> None:
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    torch.save({"trainer": {"shape": list(shape)}, "samples": 5, "source_step": 0, "step": 1},
               out / "ckpt" / f"{name}.pt")


def summary(out, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"train_samples": 400, **fields}))


def resolved(out, role: str, index: int = 0, resume: str = "auto") -> str:
    cfg = cfg_for(out, resume)
    claim_for_worker(cfg, role, index)
    return cfg.pipeline.resume


def test_auto_resumes_only_the_workers_that_have_files_of_their_own(tmp_path):
    out = tmp_path / "run"
    assert {role: resolved(out, role) for role in ("source", "stage", "sink")} == {
        "source": "false", "stage": "false", "sink": "false"}
    checkpoint(out, "stage0")  # stage 0 had checkpointed before its container restarted
    (out / "sink.jsonl").write_text("")
    assert resolved(out, "stage", 0) == "true"
    assert resolved(out, "stage", 1) == "false"  # its start record says resumed: false
    assert resolved(out, "sink") == "true"
    assert resolved(out, "source") == "false"


@pytest.mark.parametrize("resume", ["auto", "false"])
def test_a_finished_run_is_refused_naming_the_way_out(tmp_path, resume):
    out = tmp_path / "run"
    checkpoint(out, "stage0")
    summary(out, interrupted=False)
    for role in ("source", "stage", "sink"):
        with pytest.raises(ConfigError, match="holds a finished run.*RUN_NAME"):
            resolved(out, role, resume=resume)


def test_an_interrupted_run_is_continued_and_resume_true_continues_a_finished_one(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, "stage0")
    summary(out, interrupted=True)  # stopped, e.g. `docker compose stop`, or gone silent
    assert resolved(out, "stage", 0) == "true"
    summary(out, interrupted=False)
    assert resolved(out, "stage", 0, resume="true") == "true"


def test_resumed_checkpoints_must_fit_the_model(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, "stage0", shape=(8, 5))
    with pytest.raises(ConfigError, match="8x5"):
        resolved(out, "stage", 0)


def test_a_summary_that_cannot_be_read_counts_as_finished(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    assert finished_run(tmp_path)
    assert not finished_run(tmp_path / "absent")


def test_train_resume_auto_does_not_continue_a_finished_run(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, "stage0")
    summary(out)  # no `interrupted` key (a single-process run's summary): finished
    cfg = cfg_for(out, "auto")
    with pytest.raises(ConfigError, match="finished run.*--resume.*--overwrite"):
        claim(cfg)
    summary(out, interrupted=True)
    cfg = cfg_for(out, "auto")
    claim(cfg)
    assert cfg.pipeline.resume == "true"


def test_a_worker_pointed_at_a_finished_run_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    summary(out, interrupted=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = subprocess.run([sys.executable, "-m", "pipeline", "worker", "--role", "sink",
                        "--transport", "zmq", "--resume=auto", "--out", str(out)],
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffpipe: error:"), r.stderr
    assert "finished run" in lines[0] and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
