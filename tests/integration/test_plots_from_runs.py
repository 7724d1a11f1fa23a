"""The figures from a real pipelined run (source, 3 stage processes, sink), made by the
commands a user runs: `ffpipe plot` and the drift report write their PNGs, and the figure's
lines carry the numbers the stage processes and the sink wrote."""

from __future__ import annotations

import pytest

from conftest import SYNTH, SYNTH_STEPS_PER_EPOCH, read_jsonl
from pipeline.drift.report import drift_figure, load_run, make_report
from pipeline.plot_runs import run_names, training_figure
from pipeline.run_folder import read_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_and_drift_of_a_pipelined_run_show_what_its_processes_logged(procs, tmp_path):
    out = tmp_path / "run"
    code, _, err = procs.run(["train", *SYNTH, "--epochs", "2", "--out", str(out),
                              "--probe-every", "16", "--eval-every", "32"], timeout=200)
    assert code == 0, err
    code, stdout, err = procs.run(["plot", str(out)], timeout=60)
    assert code == 0 and "training.png" in stdout, err
    make_report(out)  # `ffpipe drift RUN_DIR` (its own process costs a torch import)
    for name in ("training.png", "drift.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert procs.alive() == []

    logs = read_run(out)
    fig, unit, _ = training_figure([logs])
    assert unit == "epochs"
    (acc,) = [ax for ax in fig.axes if ax.get_title().startswith("Test accuracy")]
    (line,) = [l for l in acc.lines if l.get_label() == run_names([logs])[0]]
    evals = [r for r in read_jsonl(out / "sink.jsonl") if r["kind"] == "eval"]
    assert list(line.get_ydata()) == [100 * r["test_accuracy"] for r in evals]
    assert list(line.get_xdata()) == [r["step"] / SYNTH_STEPS_PER_EPOCH for r in evals]
    for k in range(3):
        (ax,) = [ax for ax in fig.axes if ax.get_title().startswith(f"Stage {k}:")]
        (loss,) = [l for l in ax.lines if l.get_label() == run_names([logs])[0]]
        recs = [r for r in read_jsonl(out / f"stage{k}.jsonl") if r["kind"] == "train"]
        assert list(loss.get_ydata()) == [r["loss"] for r in recs]

    drift = drift_figure(load_run(out))
    (ax,) = [ax for ax in drift.axes if ax.get_title().startswith("Distribution distance")]
    for k in range(3):
        (line,) = [l for l in ax.lines if l.get_label() == f"stage {k}"]
        recs = [r for r in read_jsonl(out / f"stage{k}.jsonl") if r["kind"] == "drift"]
        assert list(line.get_ydata()) == [r["mmd2_ref"] for r in recs]
        assert list(line.get_xdata()) == [r["source_step"] / SYNTH_STEPS_PER_EPOCH
                                          for r in recs]
