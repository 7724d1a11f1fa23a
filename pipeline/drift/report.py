"""`ffpipe drift RUN_DIR`: drift.png and report.md from a run's logs, or follow a live run.

Reads only the files a run writes (README, "Files a run writes"): `stage{k}.jsonl` (records with
"kind": "drift" from DriftMonitor and "kind": "train" from the stage loop), `sink.jsonl`
("kind": "eval") and, if present, `summary.json` and `config.json`.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DriftConfig
from pipeline.errors import UserError
from pipeline.runlog import read_jsonl

# (record key, panel title) for the per-probe drift panels, in plotting order.
DRIFT_PANELS = [
    ("cos_ref", "cosine to first probe X_0 (mean per image)"),
    ("cos_prev", "cosine to previous probe"),
    ("mean_shift_ref", "relative mean shift vs X_0"),
    ("cka_ref", "linear CKA vs X_0"),
    ("mmd2_ref", "MMD² (RBF) vs X_0"),
    ("active_frac", "fraction of active input units"),
]

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

_STAGE_FILE = re.compile(r"stage(\d+)\.jsonl")


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


def _stage_files(run_dir: Path) -> dict[int, Path]:
    found = {}
    for p in run_dir.iterdir():
        m = _STAGE_FILE.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


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


@dataclass
class RunLogs:
    run_dir: Path
    drift: dict[int, list[dict]] = field(default_factory=dict)
    train: dict[int, list[dict]] = field(default_factory=dict)
    start_step: dict[int, int] = field(default_factory=dict)  # a stage's version at its start
    evals: list[dict] = field(default_factory=list)
    summary: dict | None = None
    ph_series: str = DriftConfig().ph_series
    x_key: str = "step"


def load_run(run_dir) -> RunLogs:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; give the --out folder of a run, "
                        f"e.g. ffpipe drift runs/NAME")
    files = _stage_files(run_dir)
    if not files:
        raise UserError(f"no stage logs (stage0.jsonl, ...) in {run_dir}; train into it "
                        f"first (ffpipe train --out {run_dir}) or check the path")
    logs = RunLogs(run_dir)
    for k, path in files.items():
        recs = read_jsonl(path)
        logs.drift[k] = [r for r in recs if r.get("kind") == "drift"]
        logs.train[k] = [r for r in recs if r.get("kind") == "train"]
        first = next((r for r in recs if r.get("kind") == "start"), {})
        logs.start_step[k] = first.get("version", 0)
    if (run_dir / "sink.jsonl").exists():
        logs.evals = [r for r in read_jsonl(run_dir / "sink.jsonl") if r.get("kind") == "eval"]
    logs.summary = _read_json(run_dir / "summary.json")
    cfg = _read_json(run_dir / "config.json") or {}
    logs.ph_series = (cfg.get("drift") or {}).get("ph_series", logs.ph_series)
    # Source steps put all stages on one clock; use them only if every record has one.
    every = [r for k in files for r in logs.drift[k] + logs.train[k]]
    if every and all("source_step" in r for r in every):
        logs.x_key = "source_step"
    return logs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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


def plot(logs: RunLogs, path: Path) -> None:
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no GUI needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 14), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 2).ravel()
    xlabel = "source step" if logs.x_key == "source_step" else "step"
    x_of = lambda r: r.get(logs.x_key, r.get("step"))  # noqa: E731

    for ax, (key, title) in zip(axes, DRIFT_PANELS):
        for k, recs in logs.drift.items():
            pts = [(x_of(r), r[key]) for r in recs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), color=f"C{k % 10}", marker=".", label=f"stage {k}")
            if key == logs.ph_series:
                alarms = [(x_of(r), r[key]) for r in recs if r.get("alarm")
                          and r.get(key) is not None]
                if alarms:
                    ax.plot(*zip(*alarms), linestyle="none", marker="X", markersize=11,
                            color=f"C{k % 10}", markeredgecolor="black",
                            label=f"stage {k} Page-Hinkley alarm")
        if key == logs.ph_series:
            title += "  [Page-Hinkley watched]"
        _finish(ax, title, xlabel, key)

    ax = axes[len(DRIFT_PANELS)]
    for k, recs in logs.train.items():
        pts = [(x_of(r), s) for r in recs if (s := _mean_staleness(r)) is not None]
        if pts:
            ax.plot(*zip(*pts), color=f"C{k % 10}", label=f"stage {k}")
    _finish(ax, "staleness (mean over upstream stages)", xlabel, "versions behind")

    ax = axes[len(DRIFT_PANELS) + 1]
    for key, style in (("test_accuracy", "-"), ("head_accuracy", "--")):
        pts = [(r["step"], r[key]) for r in logs.evals if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), linestyle=style, marker=".", color="black", label=key)
    _finish(ax, "streamed test accuracy (sink)", "step", "accuracy")

    fig.suptitle(f"drift of each stage's input: {logs.run_dir}")
    fig.savefig(path, dpi=90)


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


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
        f"(Page-Hinkley alarm watches `{logs.ph_series}`).",
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
        for k, path in _stage_files(self.run_dir).items():
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
            s = _read_json(run_dir / "summary.json") or {}
            acc = s.get("test_accuracy")
            print("run finished (summary.json)" +
                  (f": test accuracy {fmt(acc)}" if acc is not None else ""),
                  file=stream, flush=True)
            return
        left = None if stop_after is None else stop_after - (time.monotonic() - t0)
        if left is not None and left <= 0:
            return
        time.sleep(interval if left is None else min(interval, left))
