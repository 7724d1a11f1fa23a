"""`ffpipe drift RUN_DIR`: drift.png and report.md from a run's logs, or follow a live run.

Reads only the files a run writes (README, "Files a run writes"): `stage{k}.jsonl` (records with
"kind": "drift" from DriftMonitor and "kind": "train" from the stage loop), `sink.jsonl`
("kind": "eval") and, if present, `summary.json` and `config.json`.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path

from pipeline.config import DriftConfig
from pipeline.errors import UserError
from pipeline.figures import figure_legend, new_figure, no_data, save, time_panel, with_banner
from pipeline.run_folder import (RunLogs, common_unit, read_json, read_run, record_step,
                                 stage_files, x_label)

log = logging.getLogger(__name__)

# The per-probe drift panels, in plotting order: (record key, what the panel shows, y
# axis). The report.md table below keeps the record keys and explains them under it.
DRIFT_PANELS = [
    ("cos_ref", "Same images: input now vs at the first probe",
     "cosine similarity (1 = unchanged)"),
    ("cos_prev", "Same images: input now vs at the previous probe", "cosine similarity"),
    ("mean_shift_ref", "Shift of the mean input since the first probe",
     "|mean - first mean| / |first mean|"),
    ("cka_ref", "Geometry since the first probe", "linear CKA (1 = same geometry)"),
    ("mmd2_ref", "Distribution distance to the first probe", "MMD\u00b2, RBF kernel"),
    ("active_frac", "Input units that are active", "fraction of units > 0"),
]
MIN_PROBES = 3  # fewer give dots, not a trend

# report.md columns: (header, key of the per-stage row built by `stage_rows`).
TABLE_COLUMNS = [
    ("stage", "stage"), ("probes", "probes"),
    ("cos_ref final", "cos_ref_final"), ("cos_ref min", "cos_ref_min"),
    ("mmd2_ref final", "mmd2_ref_final"), ("mmd2_ref max", "mmd2_ref_max"),
    ("mean_shift_ref final", "mean_shift_ref_final"),
    ("mean_shift_ref max", "mean_shift_ref_max"),
    ("cka_ref final", "cka_ref_final"), ("alarms", "alarms"),
    ("staleness mean", "staleness_mean"), ("drops", "drops"), ("samples/s", "samples_per_s"),
]


def fmt(v) -> str:
    """One format for every number in the report: ints as is, floats to 4 significant
    digits, missing as '-'."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, int)):
        return str(int(v))
    return f"{v:.4g}"


def _mean_staleness(rec: dict) -> float | None:
    """Mean over upstream stages; None for stage 0 (no upstream, empty list)."""
    s = [v for v in rec.get("staleness") or [] if v is not None]
    return sum(s) / len(s) if s else None


def _staleness_per_step(train: list[dict], start_step: int = 0) -> float | None:
    """Mean staleness per training step, as summary.json's `mean_staleness` counts it:
    each record's mean weighs as many steps as it covers (the last record of a run, or one
    at a stop, covers fewer than `log_every`)."""
    total = steps = 0.0
    prev = start_step
    for r in train:
        s, n = _mean_staleness(r), r["step"] - prev
        prev = r["step"]
        if s is not None and n > 0:
            total, steps = total + s * n, steps + n
    return total / steps if steps else None


def load_run(run_dir) -> RunLogs:
    return read_run(run_dir, "ffpipe drift")


def _values(recs: list[dict], key: str) -> list[float]:
    return [r[key] for r in recs if r.get(key) is not None]


def stage_rows(logs: RunLogs) -> list[dict]:
    """One row per stage: final/extreme drift vs X_0 and the train-traffic figures."""
    rows = []
    for k in sorted(set(logs.drift) | set(logs.train)):
        drift, train = logs.drift.get(k, []), logs.train.get(k, [])
        last = drift[-1] if drift else {}
        cos, mmd, shift = (_values(drift, key) for key in ("cos_ref", "mmd2_ref",
                                                            "mean_shift_ref"))
        rate = _values(train, "samples_per_s")
        rows.append({
            "stage": k, "probes": len(drift),
            "cos_ref_final": last.get("cos_ref"), "cos_ref_min": min(cos, default=None),
            "mmd2_ref_final": last.get("mmd2_ref"), "mmd2_ref_max": max(mmd, default=None),
            "mean_shift_ref_final": last.get("mean_shift_ref"),
            "mean_shift_ref_max": max(shift, default=None),
            "cka_ref_final": last.get("cka_ref"),
            # Counted from the records, so the table agrees with the markers on the plot.
            "alarms": sum(1 for r in drift if r.get("alarm")),
            "staleness_mean": _staleness_per_step(train, logs.start_step.get(k, 0)),
            "drops": train[-1].get("drops") if train else None,
            "samples_per_s": statistics.median(rate) if rate else None,
        })
    return rows


def ph_series(logs: RunLogs) -> str:
    """The drift series the run's Page-Hinkley alarm watched (config.json)."""
    return (logs.config.get("drift") or {}).get("ph_series", DriftConfig().ph_series)


def probe_warning(logs: RunLogs) -> str | None:
    """What to tell the user when the run has too few probes to show drift over time."""
    most = max((len(recs) for recs in logs.drift.values()), default=0)
    if most >= MIN_PROBES:
        return None
    every = (logs.config.get("drift") or {}).get("probe_every")
    how = (f"probe more often (--probe-every, {every} steps in this run) or train longer"
           if every else "turn probes on (--probe-every N) or train longer")
    return (f"only {most} probe{'' if most == 1 else 's'} per stage in {logs.run_dir}: "
            f"drift over time needs at least {MIN_PROBES}; {how}")


def drift_figure(logs: RunLogs, unit: str = "epochs"):
    """The drift figure of one run: six drift panels (each stage's input for the fixed
    probe images vs the first probe), staleness and the streamed test accuracy. Returns
    the matplotlib Figure."""
    facts = logs.facts
    unit, unit_note = common_unit([facts], unit)
    few = probe_warning(logs)
    fig = new_figure(13, 15)
    body = with_banner(fig, few, height=0.045)
    axes = body.subplots(4, 2).ravel()
    x = lambda r: facts.x(record_step(r), unit)  # noqa: E731
    watched = ph_series(logs)

    for ax, (key, title, ylabel) in zip(axes, DRIFT_PANELS):
        for k, recs in logs.drift.items():
            pts = [(x(r), r[key]) for r in recs if r.get(key) is not None]
            # A handful of probes must still be seen: big markers, shrinking with the
            # stage, so stages at the same value show as rings around each other.
            size = max(12 - 3 * k, 4) if few else 5
            if pts:
                ax.plot(*zip(*pts), color=f"C{k % 10}", label=f"stage {k}",
                        marker="o" if few else ".", markersize=size)
            alarms = [(x(r), r[key]) for r in recs if key == watched and r.get("alarm")
                      and r.get(key) is not None]
            if alarms:
                ax.plot(*zip(*alarms), linestyle="none", marker="X", markersize=12,
                        color=f"C{k % 10}", markeredgecolor="black",
                        label="Page-Hinkley drift alarm")
        if key == watched:
            title += " (watched by the Page-Hinkley alarm)"
        _panel(ax, facts, unit, title, ylabel)
        if few and ax.lines:
            no_data(ax, "too few probes to show a trend")

    ax = axes[len(DRIFT_PANELS)]
    for k, recs in logs.train.items():
        pts = [(x(r), s) for r in recs if (s := _mean_staleness(r)) is not None]
        if pts:
            ax.plot(*zip(*pts), color=f"C{k % 10}", linewidth=0.9, label=f"stage {k}")
    _panel(ax, facts, unit, "Staleness of each stage's input",
           "upstream updates behind (mean)")

    ax = axes[len(DRIFT_PANELS) + 1]
    for key, style, name in (("test_accuracy", "-", "test accuracy (goodness)"),
                             ("head_accuracy", "--", "test accuracy (softmax head)")):
        pts = [(x(r), 100 * r[key]) for r in logs.evals if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), linestyle=style, marker="o", markersize=4, color="black",
                    label=name)
    _panel(ax, facts, unit, "Test accuracy, streamed during training", "accuracy %")

    body.suptitle(f"Drift of each stage's input over training\n{facts.describe()}  "
                  f"({logs.run_dir})", fontsize=13)
    figure_legend(body, axes, ncols=6)
    if unit_note:
        log.warning(unit_note)
    return fig


def _panel(ax, facts, unit: str, title: str, ylabel: str) -> None:
    end = facts.x(facts.total_steps, unit) if facts.total_steps and facts.knows(unit) else None
    time_panel(ax, title, x_label(unit, facts), ylabel, samples=unit == "samples",
               decay_xs=[facts.x(s, unit) for s in facts.decay_steps()], x_end=end, pad=0.02)


def plot(logs: RunLogs, path: Path, unit: str = "epochs") -> Path:
    return save(drift_figure(logs, unit), path, dpi=90)


def write_markdown(logs: RunLogs, rows: list[dict], path: Path) -> None:
    lines = [f"# Drift report: {logs.run_dir}", ""]
    s = logs.summary or {}
    facts = [f"{name} {fmt(s[key])}" for key, name in
             (("schedule", "schedule"), ("test_accuracy", "test accuracy"),
              ("wall_seconds", "wall seconds"), ("samples_per_second", "samples/s"))
             if s.get(key) is not None]
    if facts:
        lines += ["Run (summary.json): " + ", ".join(facts) + ".", ""]
    if logs.evals:
        e = logs.evals[-1]
        lines += [f"Last streamed evaluation: test accuracy {fmt(e.get('test_accuracy'))} "
                  f"at step {fmt(e.get('step'))}.", ""]
    lines += [
        "Drift of each stage's input versus its first probe X_0 "
        f"(Page-Hinkley alarm watches `{ph_series(logs)}`).",
        "",
        "| " + " | ".join(h for h, _ in TABLE_COLUMNS) + " |",
        "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row[key]) for _, key in TABLE_COLUMNS) + " |")
    lines += [
        "",
        "cos_ref: mean per-image cosine to X_0 (1 = unchanged). mmd2_ref: MMD² with a "
        "fixed RBF bandwidth (0 = same distribution). mean_shift_ref: |mean - mean_0| / "
        "|mean_0|. cka_ref: linear CKA (1 = same geometry). staleness: upstream versions "
        "since the stage last saw each upstream, averaged. drops: last train record. "
        "samples/s: median over train records.",
        "",
        "![drift](drift.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def make_report(run_dir) -> tuple[Path, Path]:
    """Write RUN_DIR/drift.png and RUN_DIR/report.md; return their paths."""
    logs = load_run(run_dir)
    png, md = logs.run_dir / "drift.png", logs.run_dir / "report.md"
    few = probe_warning(logs)
    if few:
        log.warning(few)
    plot(logs, png)
    write_markdown(logs, stage_rows(logs), md)
    return png, md


class _Tail:
    """New complete lines of a growing file; a half-written last line waits for later."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read_new(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # rewritten from scratch (a new run into the same folder)
            self.offset = 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in chunk[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class Follower:
    """Tails every stage log of a run; `poll()` gives one line per stage that has news."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.tails: dict[int, _Tail] = {}
        self.latest: dict[int, dict] = {}

    def poll(self) -> list[str]:
        for k, path in stage_files(self.run_dir).items():
            self.tails.setdefault(k, _Tail(path))
        lines = []
        for k, tail in sorted(self.tails.items()):
            recs = tail.read_new()
            if not recs:
                continue
            state = self.latest.setdefault(k, {})
            for r in recs:  # later records overwrite earlier ones: keep the newest values
                if r.get("kind") == "train":
                    state.update(step=r.get("step"), samples_per_s=r.get("samples_per_s"),
                                 staleness=_mean_staleness(r))
                elif r.get("kind") == "drift":
                    state.update(cos_ref=r.get("cos_ref"), mmd2_ref=r.get("mmd2_ref"),
                                 alarms=r.get("alarms"))
            lines.append(self.line(k))
        return lines

    def line(self, k: int) -> str:
        s = self.latest.get(k, {})
        return (f"stage {k}  step {fmt(s.get('step'))}  {fmt(s.get('samples_per_s'))} "
                f"samples/s  cos_ref {fmt(s.get('cos_ref'))}  mmd2_ref "
                f"{fmt(s.get('mmd2_ref'))}  alarms {fmt(s.get('alarms'))}  staleness "
                f"{fmt(s.get('staleness'))}")


def watch(run_dir, interval: float = 5.0, stream=sys.stdout,
          stop_after: float | None = None) -> None:
    """Print what each stage logged since the last look, every `interval` seconds, until
    summary.json appears (the run finished) or `stop_after` seconds have passed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; start the run first or check "
                        f"the path")
    if interval <= 0:
        raise UserError(f"watch interval must be > 0 seconds, got {interval}")
    follower = Follower(run_dir)
    t0 = time.monotonic()
    while True:
        # Look for summary.json BEFORE reading the logs: the run writes it last, so this
        # poll then sees every record.
        finished = (run_dir / "summary.json").exists()
        for line in follower.poll():
            print(line, file=stream, flush=True)
        if finished:
            s = read_json(run_dir / "summary.json")
            acc = s.get("test_accuracy")
            print("run finished (summary.json)" +
                  (f": test accuracy {fmt(acc)}" if acc is not None else ""),
                  file=stream, flush=True)
            return
        left = None if stop_after is None else stop_after - (time.monotonic() - t0)
        if left is not None and left <= 0:
            return
        time.sleep(interval if left is None else min(interval, left))
