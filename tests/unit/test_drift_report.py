"""`ffpipe drift`: report.md numbers match the JSONL they come from, drift.png is a real
PNG, bad run folders are one-line user errors, and watch() follows a live run."""

import io
import json
import statistics
import threading
import time

import pytest

from pipeline.drift.report import (DRIFT_PANELS, Follower, drift_figure, load_run, make_report,
                                   watch)
from pipeline.errors import UserError
from pipeline.figures import DECAY_LABEL
from pipeline.runlog import JsonlWriter, write_json_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def drift_rec(stage, step, cos, mmd, shift, cka, alarm=False, alarms=0):
    return {"kind": "drift", "stage": stage, "step": step, "source_step": step * 2,
            "probe": step // 10, "cos_ref": cos, "cos_prev": min(1.0, cos + 0.01),
            "mean_shift_ref": shift, "mean_shift_prev": shift / 2, "cka_ref": cka,
            "cka_prev": 1.0, "mmd2_ref": mmd, "mmd2_prev": mmd / 3, "active_frac": 0.5,
            "alarm": alarm, "alarms": alarms, "ph_stat": 0.1}


def train_rec(stage, step, rate, staleness, drops):
    return {"kind": "train", "stage": stage, "step": step, "source_step": step * 2,
            "time": step / 10, "samples": step * 100, "samples_per_s": rate, "loss": 0.7,
            "g_pos": 2.0, "g_neg": 1.0, "queue_depth": 1, "drops": drops,
            "staleness": staleness, "wait_recv_s": 0.0, "wait_send_s": 0.0}


# Three stages: stage 0 sees raw data (zero drift), stages 1-2 drift, stage 2 alarms and
# its mmd2 peaks before the end (so "final" and "max" differ).
STAGES = {
    0: ([drift_rec(0, s, 1.0, 0.0, 0.0, 1.0) for s in (0, 10, 20)],
        [train_rec(0, s, r, [], 0) for s, r in ((5, 1500.5), (15, 1600.25), (25, 1550.0))]),
    1: ([drift_rec(1, 0, 1.0, 0.0, 0.0, 1.0), drift_rec(1, 10, 0.987654321, 0.0123456, 0.05,
                                                        0.99912),
         drift_rec(1, 20, 0.97531, 0.02468, 0.0812345, 0.998123)],
        [train_rec(1, s, r, [st], 1) for s, r, st in ((5, 1400.0, 1), (15, 1401.0, 2),
                                                      (25, 1377.77, 4))]),
    2: ([drift_rec(2, 0, 1.0, 0.0, 0.0, 1.0),
         drift_rec(2, 10, 0.81234567, 0.3456789, 0.4321, 0.912345, alarm=True, alarms=1),
         drift_rec(2, 20, 0.8888, 0.2222, 0.3, 0.95, alarms=1)],
        [train_rec(2, s, r, st, 3) for s, r, st in ((5, 1200.0, [1, 2]), (15, 1300.0, [3, 5]))]),
}
EVALS = [{"kind": "eval", "step": 20, "test_accuracy": 0.8, "head_accuracy": 0.7},
         {"kind": "eval", "step": 40, "test_accuracy": 0.912345}]


def write_run(run_dir, with_summary=True):
    for k, (drift, train) in STAGES.items():
        w = JsonlWriter(run_dir / f"stage{k}.jsonl")
        for r in sorted(drift + train, key=lambda r: r["step"]):
            w.write(r)
        w.close()
    w = JsonlWriter(run_dir / "sink.jsonl")
    for r in EVALS:
        w.write(r)
    w.close()
    if with_summary:
        write_json_atomic(run_dir / "summary.json", {"schedule": "pipelined",
                                                     "test_accuracy": 0.912345})


def expected_row(k):
    """What report.md must say for stage k, computed straight from the synthetic JSONL."""
    drift, train = STAGES[k]
    f = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    # per step, as summary.json counts it: a record weighs the steps since the one before
    steps = [b["step"] - a for a, b in zip([0] + [r["step"] for r in train], train)]
    stale = [(sum(r["staleness"]) / len(r["staleness"]), n) for r, n in zip(train, steps)
             if r["staleness"]]
    return {
        "stage": str(k), "probes": str(len(drift)),
        "cos_ref final": f(drift[-1]["cos_ref"]),
        "cos_ref min": f(min(r["cos_ref"] for r in drift)),
        "mmd2_ref final": f(drift[-1]["mmd2_ref"]),
        "mmd2_ref max": f(max(r["mmd2_ref"] for r in drift)),
        "mean_shift_ref final": f(drift[-1]["mean_shift_ref"]),
        "mean_shift_ref max": f(max(r["mean_shift_ref"] for r in drift)),
        "cka_ref final": f(drift[-1]["cka_ref"]),
        "alarms": str(sum(r["alarm"] for r in drift)),
        "staleness mean": f(sum(s * n for s, n in stale) / sum(n for _, n in stale)
                            if stale else None),
        "drops": str(train[-1]["drops"]),
        "samples/s": f(statistics.median(r["samples_per_s"] for r in train)),
    }


def parse_table(md: str) -> list[dict]:
    rows = [line for line in md.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    header, body = cells[0], cells[2:]  # cells[1] is the |---| separator
    return [dict(zip(header, row)) for row in body]


def test_report_table_numbers_match_the_jsonl_and_png_is_written(tmp_path):
    write_run(tmp_path)
    png, md = make_report(tmp_path)
    assert png == tmp_path / "drift.png" and md == tmp_path / "report.md"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    table = parse_table(md.read_text())
    assert [row["stage"] for row in table] == ["0", "1", "2"]
    for k, row in enumerate(table):
        assert row == expected_row(k)
    # Spot-check the formatting itself, not only that both sides agree.
    assert table[1]["cos_ref final"] == "0.9753" and table[2]["cos_ref min"] == "0.8123"
    assert table[2]["mmd2_ref max"] == "0.3457" and table[2]["alarms"] == "1"
    # stage 2: 1.5 over its first 5 steps, then 4 over 10: (7.5 + 40) / 15
    assert table[0]["staleness mean"] == "-" and table[2]["staleness mean"] == "3.167"


def test_report_mentions_run_summary_and_last_accuracy(tmp_path):
    write_run(tmp_path)
    text = make_report(tmp_path)[1].read_text()
    assert "pipelined" in text and "0.9123" in text
    assert "drift.png" in text


def test_report_works_without_sink_summary_or_train_records(tmp_path):
    w = JsonlWriter(tmp_path / "stage0.jsonl")
    w.write({k: v for k, v in drift_rec(0, 0, 1.0, 0.0, 0.0, 1.0).items()
             if k != "source_step"})  # falls back to "step" as the x axis
    w.close()
    png, md = make_report(tmp_path)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert parse_table(md.read_text())[0]["samples/s"] == "-"


def test_report_skips_a_torn_last_line_of_a_killed_run(tmp_path):
    write_run(tmp_path)
    with open(tmp_path / "stage1.jsonl", "a") as f:
        f.write('{"kind": "drift", "cos_ref": 0.1')  # killed mid-write
    table = parse_table(make_report(tmp_path)[1].read_text())
    assert table[1] == expected_row(1)


def test_missing_run_dir_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="not found") as exc:
        make_report(tmp_path / "nope")
    assert "\n" not in str(exc.value)


def test_run_dir_without_stage_logs_is_a_one_line_user_error(tmp_path):
    (tmp_path / "sink.jsonl").write_text("")
    with pytest.raises(UserError, match="no stage logs") as exc:
        make_report(tmp_path)
    assert "\n" not in str(exc.value)


# --- watch ---------------------------------------------------------------------------

def test_watch_with_stop_after_prints_one_line_per_stage(tmp_path):
    write_run(tmp_path, with_summary=False)
    out = io.StringIO()
    t0 = time.monotonic()
    watch(tmp_path, interval=0.05, stream=out, stop_after=0.3)
    assert time.monotonic() - t0 < 2.0
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["stage", "0"], ["stage", "1"],
                                                    ["stage", "2"]]
    # Latest values: stage 2's last train step 15, last drift cos 0.8888, 1 alarm, 4.0 stale
    assert "step 15" in lines[2] and "cos_ref 0.8888" in lines[2]
    assert "alarms 1" in lines[2] and "staleness 4" in lines[2]


def test_watch_stops_with_a_final_line_when_summary_appears(tmp_path):
    write_run(tmp_path, with_summary=False)
    out = io.StringIO()
    timer = threading.Timer(0.2, write_json_atomic,
                            (tmp_path / "summary.json", {"test_accuracy": 0.5}))
    timer.start()
    try:
        watch(tmp_path, interval=0.05, stream=out, stop_after=10.0)
    finally:
        timer.cancel()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1] == "run finished (summary.json): test accuracy 0.5"


def test_follower_reads_only_new_records_and_waits_for_partial_lines(tmp_path):
    path = tmp_path / "stage1.jsonl"
    path.write_text(json.dumps(train_rec(1, 5, 100.0, [1], 0)) + "\n")
    follower = Follower(tmp_path)
    assert follower.poll() == [follower.line(1)] and "step 5" in follower.line(1)
    assert follower.poll() == []  # nothing new: stay quiet
    half = json.dumps(train_rec(1, 6, 200.0, [2], 0))
    with open(path, "a") as f:
        f.write(half[:20])  # the writer is mid-line
    assert follower.poll() == []
    with open(path, "a") as f:
        f.write(half[20:] + "\n")
    (line,) = follower.poll()
    assert "step 6" in line and "200 samples/s" in line and "staleness 2" in line


def test_watch_on_missing_run_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        watch(tmp_path / "nope", interval=0.01, stop_after=0.01)


# --- drift.png: what the figure shows ----------------------------------------------------

CONFIG = {"train": {"schedule": "pipelined", "seed": 3, "batch_size": 10, "epochs": 2,
                    "lr_schedule": "linear-decay"},
          "model": {"layers": [64, 32, 32, 32]}, "data": {"dataset": "synthetic"},
          "drift": {"ph_series": "mmd2_ref", "probe_every": 20}}
FINAL = {"kind": "eval", "step": 40, "final": True, "test_accuracy": 0.95}  # 2 epochs x 20


def write_configured_run(run_dir):
    write_run(run_dir)
    write_json_atomic(run_dir / "config.json", CONFIG)
    with open(run_dir / "sink.jsonl", "a") as f:
        f.write(json.dumps(FINAL) + "\n")


def lines_of(ax, label):
    return [line for line in ax.lines if line.get_label() == label]


def test_drift_figure_plots_each_stage_s_jsonl_values_against_epochs(tmp_path):
    write_configured_run(tmp_path)
    fig = drift_figure(load_run(tmp_path))
    axes = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
    steps_per_epoch = FINAL["step"] / CONFIG["train"]["epochs"]  # the final eval's step
    for key, title, _ in DRIFT_PANELS:
        ax = axes[title]
        for k, (drift, _) in STAGES.items():
            (line,) = lines_of(ax, f"stage {k}")
            assert list(line.get_ydata()) == [r[key] for r in drift]
            assert list(line.get_xdata()) == [r["source_step"] / steps_per_epoch
                                              for r in drift]
        # The decay starts half way through training: epoch 1 of 2.
        (decay,) = lines_of(ax, DECAY_LABEL)
        assert list(decay.get_xdata()) == [1.0, 1.0]
        assert "epoch" in ax.get_xlabel() and ax.get_ylabel() != key  # words, not keys
    # Stage 2's Page-Hinkley alarm sits on its MMD² curve where the record says.
    (alarm,) = lines_of(axes[dict((k, t) for k, t, _ in DRIFT_PANELS)["mmd2_ref"]],
                        "Page-Hinkley drift alarm")
    assert list(alarm.get_ydata()) == [STAGES[2][0][1]["mmd2_ref"]]
    acc = axes["Test accuracy, streamed during training"]
    (line,) = lines_of(acc, "test accuracy (goodness)")
    assert list(line.get_ydata()) == [100 * r["test_accuracy"] for r in EVALS + [FINAL]]
    (head,) = lines_of(acc, "test accuracy (softmax head)")
    assert list(head.get_ydata()) == [100 * EVALS[0]["head_accuracy"]]
    title = fig._suptitle.get_text()
    assert all(w in title for w in ("pipelined", "synthetic", "64-32-32-32", "seed 3"))
    assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, outside the panels
    assert len(fig.legends) == 1


def test_fewer_than_three_probes_warn_on_the_console_and_in_the_figure(tmp_path, caplog):
    w = JsonlWriter(tmp_path / "stage0.jsonl")
    w.write(drift_rec(0, 0, 1.0, 0.0, 0.0, 1.0))
    w.close()
    write_json_atomic(tmp_path / "config.json", CONFIG)
    with caplog.at_level("WARNING"):
        png, _ = make_report(tmp_path)
    (warning,) = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith("only")]
    assert "only 1 probe" in warning and "--probe-every" in warning
    assert png.read_bytes()[:8] == PNG_MAGIC
    fig = drift_figure(load_run(tmp_path))
    texts = [t.get_text() for sub in fig.subfigs for t in sub.texts]
    assert any("only 1 probe" in t for t in texts)


def test_enough_probes_give_no_warning(tmp_path, caplog):
    write_configured_run(tmp_path)
    with caplog.at_level("WARNING"):
        make_report(tmp_path)
    assert caplog.records == []
