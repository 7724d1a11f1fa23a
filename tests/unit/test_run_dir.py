"""The run folder's rules (`processes.run_dir.claim`) and provenance, in this process:
what `ffpipe train` does to --out before anything starts. The refusals, one line each
through the real CLI, are in test_cli_errors.py; here are the runs that go ahead, and the
one refusal that test cannot set up when it runs as root (a folder it may not write)."""

import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.processes.run_dir import claim, write_run_config
from pipeline.records import base_summary

ROOT = Path(__file__).resolve().parents[2]


def cfg_for(out, *overrides):
    return load_config(None, [("model.layers", "64,12,12"), ("out", str(out)), *overrides])


def stage_ckpt(out, k: int, shape=(64, 12)) -> None:
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    torch.save({"trainer": {"shape": list(shape)}, "samples": 5, "source_step": 0},
               out / "ckpt" / f"stage{k}.pt")


def test_without_out_each_run_gets_a_folder_named_for_its_utc_start():
    before = time.gmtime(time.time() - 1)
    out = load_config(None, []).out
    after = time.gmtime(time.time() + 1)
    assert re.fullmatch(r"runs/\d{8}-\d{6}", out), out
    stamp = time.strptime(out[len("runs/"):], "%Y%m%d-%H%M%S")
    assert before <= stamp <= after


def test_overwrite_removes_the_earlier_runs_files_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    stage_ckpt(out, 0)
    for name in ("config.json", "summary.json", "sink.jsonl", "stage0.jsonl", "stage7.jsonl",
                 "notes.txt"):
        (out / name).write_text("{}")
    (out / "mine").mkdir()
    claim(cfg_for(out, ("pipeline.overwrite", "true")))
    assert sorted(p.name for p in out.iterdir()) == ["mine", "notes.txt"]


def test_resume_auto_starts_fresh_without_checkpoints_and_resumes_with_them(tmp_path):
    fresh = cfg_for(tmp_path / "new", ("pipeline.resume", "auto"))
    claim(fresh)
    assert fresh.pipeline.resume == "false"
    stage_ckpt(tmp_path / "old", 0)
    again = cfg_for(tmp_path / "old", ("pipeline.resume", "auto"))
    claim(again)
    assert again.pipeline.resume == "true"


def test_resume_accepts_a_stage_without_a_checkpoint_when_the_recorded_run_has_its_layers(
        tmp_path):
    # Stage 1 was killed before its first checkpoint: the same model, so resume goes
    # ahead (and the source restarts from step 0 for it: test_resume.py).
    out = tmp_path / "run"
    write_run_config(cfg_for(out))
    stage_ckpt(out, 0)
    cfg = cfg_for(out, ("pipeline.resume", "true"))
    claim(cfg)
    assert cfg.pipeline.resuming


def test_resume_refuses_other_training_settings_and_names_each_change(tmp_path, caplog):
    out = tmp_path / "run"
    write_run_config(cfg_for(out, ("train.lr", "0.001"), ("train.epochs", "100")))
    stage_ckpt(out, 0)
    with pytest.raises(ConfigError) as err:
        claim(cfg_for(out, ("pipeline.resume", "true"), ("train.lr", "0.002"),
                      ("model.threshold_scale", "0.5"), ("pipeline.wire_dtype", "bfloat16")))
    msg = str(err.value)
    for change in ("train.lr: 0.001 -> 0.002", "model.threshold_scale",
                   "pipeline.wire_dtype: 'float32' -> 'bfloat16'",
                   f"--config {out}/config.json --resume"):
        assert change in msg, msg
    # how the processes run and log may change, and the budget (with a warning line)
    cfg = cfg_for(out, ("pipeline.resume", "true"), ("train.lr", "0.001"),
                  ("pipeline.threads_per_stage", "2"), ("train.eval_every", "7"),
                  ("pipeline.transport", "zmq"), ("train.epochs", "7"))
    with caplog.at_level(logging.WARNING):
        claim(cfg)
    assert cfg.pipeline.resuming
    assert "train.epochs: 100 -> 7" in caplog.text


def test_a_run_recorded_before_a_setting_existed_resumes_only_with_its_old_value(tmp_path):
    out = tmp_path / "run"
    write_run_config(cfg_for(out, ("model.threshold_scale", "1")))
    table = json.loads((out / "config.json").read_text())
    del table["model"]["threshold_scale"]  # as a file written before the key existed
    (out / "config.json").write_text(json.dumps(table))
    stage_ckpt(out, 0)
    with pytest.raises(ConfigError, match="model.threshold_scale: 1.0 -> 0.5"):
        claim(cfg_for(out, ("pipeline.resume", "true"), ("model.threshold_scale", "0.5")))
    claim(cfg_for(out, ("pipeline.resume", "true"), ("model.threshold_scale", "1")))


def test_config_and_summary_record_where_the_run_came_from(tmp_path):
    cfg = cfg_for(tmp_path / "run")
    write_run_config(cfg)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["provenance"]
    assert base_summary(cfg)["provenance"] == recorded
    assert {"ff_pipeline", "git_commit", "python", "torch", "command",
            "started_utc"} <= set(recorded)
    assert recorded["torch"].split("+")[0] == torch.__version__.split("+")[0]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if head:  # a checkout: the commit, + "+dirty" when files differ from it
        assert recorded["git_commit"].split("+")[0] == head
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", recorded["started_utc"])


def test_an_out_folder_that_cannot_be_written_is_refused_naming_the_folder(tmp_path,
                                                                            monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: stand in for a folder it may not write
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked
                            else real(p, mode))
    else:
        locked.chmod(0o555)
    with pytest.raises(ConfigError, match=f"cannot write in {locked}"):
        claim(cfg_for(locked / "run"))
    assert list(locked.iterdir()) == []
