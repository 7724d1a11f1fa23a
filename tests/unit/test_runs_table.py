"""`ffpipe runs` over recorded run folders (tests/data/recorded_runs: the config.json and
summary.json of three real synthetic runs), plus the folders a crash or a live run
leaves: a run without a summary, an interrupted one, one whose summary is cut off."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.runs_table import runs_main

RECORDED = Path(__file__).parent.parent / "data" / "recorded_runs"


@pytest.fixture
def runs(tmp_path) -> Path:
    """A folder of runs, some one level deeper: the recorded ones and three unfinished."""
    root = tmp_path / "runs"
    shutil.copytree(RECORDED, root / "final")
    live = root / "live"  # started, no summary yet
    live.mkdir()
    shutil.copy(RECORDED / "lockstep-s0" / "config.json", live)
    stopped = root / "stopped"  # Ctrl-C before the final evaluation
    shutil.copytree(RECORDED / "pipelined-local-s0", stopped)
    s = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**s, "test_accuracy": None,
                                                      "interrupted": True}))
    torn = root / "torn"  # a summary cut off mid-write (by hand: runs write atomically)
    shutil.copytree(RECORDED / "backprop-s0", torn)
    (torn / "summary.json").write_text('{"schedule": "backp')
    (root / "final" / "not-a-run").mkdir()  # a stray folder is not a run
    return root


def table(capsys, *argv) -> list[dict]:
    assert runs_main(["--csv", *argv]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def recorded(name: str) -> dict:
    return json.loads((RECORDED / name / "summary.json").read_text())


def test_each_recorded_run_is_one_row_with_its_summary_values(capsys, runs):
    rows = {Path(r["run"]).name: r for r in table(capsys, str(runs))}
    assert set(rows) == {"lockstep-s0", "pipelined-local-s0", "backprop-s0", "live",
                         "stopped", "torn"}
    for name in ("lockstep-s0", "pipelined-local-s0", "backprop-s0"):
        s, row = recorded(name), rows[name]
        assert row["status"] == "finished"
        assert float(row["test_accuracy"]) == s["test_accuracy"]
        assert float(row["wall_seconds"]) == s["wall_seconds"]
        assert float(row["samples_per_second"]) == s["samples_per_second"]
        assert row["layers"] == "-".join(map(str, s["layers"]))
        assert row["seed"] == str(s["seed"]) and row["dataset"] == s["dataset"]
        assert row["ff_pipeline"] == s["provenance"]["ff_pipeline"]
        assert row["head_accuracy"] == str(s.get("head_accuracy", ""))
    assert rows["pipelined-local-s0"]["schedule"] == "pipelined-local"


def test_runs_without_a_final_summary_are_listed_as_such_not_skipped(capsys, runs):
    rows = {Path(r["run"]).name: r for r in table(capsys, str(runs))}
    assert rows["live"]["status"] == "unfinished"
    assert rows["live"]["schedule"] == "lockstep"  # what was asked comes from config.json
    assert rows["live"]["test_accuracy"] == ""
    assert rows["stopped"]["status"] == "interrupted"
    assert rows["torn"]["status"] == "unreadable"
    assert rows["torn"]["schedule"] == "backprop"


def test_default_order_groups_comparable_runs_and_accuracy_order_puts_the_best_first(
        capsys, runs):
    rows = [r for r in table(capsys, str(runs)) if r["test_accuracy"]]
    keys = [(r["dataset"], r["layers"], r["schedule"]) for r in rows]
    assert keys == sorted(keys)
    by_acc = [r["test_accuracy"] for r in table(capsys, "--sort", "accuracy", str(runs))]
    filled = [float(a) for a in by_acc if a]
    assert filled == sorted(filled, reverse=True) and by_acc[len(filled):] == [""] * (
        len(by_acc) - len(filled))


def test_the_table_shows_percentages_and_a_run_folder_can_be_given_directly(capsys):
    assert runs_main([str(RECORDED / "backprop-s0")]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["run", "schedule", "dataset"]
    assert f"{100 * recorded('backprop-s0')['test_accuracy']:.2f}" in row.split()
    assert row.split()[-1] == "finished"


def test_a_missing_folder_or_one_without_runs_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        runs_main([str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="no runs in it"):
        runs_main([str(tmp_path)])
