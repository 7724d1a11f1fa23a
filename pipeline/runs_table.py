"""`ffpipe runs DIR...`: one table over runs that already exist.

Each DIR is a run folder (it holds config.json or summary.json) or a folder with run
folders anywhere below it. A row comes from the run's config.json (what was asked:
schedule, dataset, layers, seed) and summary.json (what happened: accuracy, time,
throughput); a run without a final summary is listed as unfinished, never skipped, and a
file that cannot be read leaves its cells empty instead of stopping the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from pipeline.errors import UserError

# (key, header, format of the table cell); the CSV has the keys and raw values.
COLUMNS = [
    ("run", "run", "{}"),
    ("schedule", "schedule", "{}"),
    ("dataset", "dataset", "{}"),
    ("layers", "layers", "{}"),
    ("seed", "seed", "{}"),
    ("epochs", "epochs", "{}"),
    ("test_accuracy", "acc %", "{:.2%}"),
    ("head_accuracy", "head %", "{:.2%}"),
    ("wall_seconds", "wall s", "{:.1f}"),
    ("samples_per_second", "samples/s", "{:.0f}"),
    ("ff_pipeline", "version", "{}"),
    ("status", "status", "{}"),
]
NUMERIC = {"seed", "epochs", "test_accuracy", "head_accuracy", "wall_seconds",
           "samples_per_second"}
SORTS = ("group", "accuracy", "started", "path")


def is_run(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "summary.json").is_file()


def find_runs(root: Path) -> list[Path]:
    """`root` if it is a run, else every run folder below it (symlinked folders below
    the top are not followed, so a link cannot make the walk loop)."""
    if is_run(root):
        return [root]
    found = []
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."):
            found += find_runs(sub)
    return found


def read_json(path: Path) -> tuple[dict | None, bool]:
    """(content, readable): (None, True) when the file is absent."""
    if not path.exists():
        return None, True
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, False
    return (table, True) if isinstance(table, dict) else (None, False)


def run_row(folder: Path) -> dict:
    cfg, cfg_ok = read_json(folder / "config.json")
    summary, summary_ok = read_json(folder / "summary.json")
    cfg, s = cfg or {}, summary or {}
    train, model, data = (cfg.get(k) if isinstance(cfg.get(k), dict) else {}
                          for k in ("train", "model", "data"))
    schedule = s.get("schedule", train.get("schedule"))
    transport = s.get("transport", (cfg.get("pipeline") or {}).get("transport"))
    if schedule == "pipelined" and transport:
        schedule = f"pipelined-{transport}"
    layers = s.get("layers", model.get("layers"))
    prov = s.get("provenance") or cfg.get("provenance") or {}
    if not (cfg_ok and summary_ok):
        status = "unreadable"
    elif s.get("interrupted"):
        status = "interrupted"
    else:
        status = "unfinished" if s.get("test_accuracy") is None else "finished"
    return {"run": str(folder), "schedule": schedule,
            "dataset": s.get("dataset", data.get("dataset")),
            "layers": "-".join(map(str, layers)) if isinstance(layers, list) else None,
            "seed": s.get("seed", train.get("seed")),
            "epochs": s.get("epochs", train.get("epochs")),
            "test_accuracy": s.get("test_accuracy"), "head_accuracy": s.get("head_accuracy"),
            "wall_seconds": s.get("wall_seconds"),
            "samples_per_second": s.get("samples_per_second"),
            "ff_pipeline": prov.get("ff_pipeline"), "status": status,
            "started": prov.get("started_utc")}


def sort_rows(rows: list[dict], by: str) -> list[dict]:
    text = lambda v: "" if v is None else str(v)  # noqa: E731  (None sorts first)
    if by == "accuracy":  # best first; runs without an accuracy last
        return sorted(rows, key=lambda r: (r["test_accuracy"] is None,
                                           -(r["test_accuracy"] or 0), r["run"]))
    if by == "started":
        return sorted(rows, key=lambda r: (text(r["started"]), r["run"]))
    if by == "path":
        return sorted(rows, key=lambda r: r["run"])
    # group: runs that compare side by side (same data and model, then schedule) together,
    # seeds in numeric order
    return sorted(rows, key=lambda r: (text(r["dataset"]), text(r["layers"]),
                                       text(r["schedule"]), r["seed"] if isinstance(
                                           r["seed"], int) else -1, r["run"]))


def cell(row: dict, key: str, fmt: str) -> str:
    value = row[key]
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):  # a hand-edited summary: show what is there
        return str(value)


def format_table(rows: list[dict]) -> str:
    cells = [[header for _, header, _ in COLUMNS]]
    cells += [[cell(r, key, fmt).removesuffix("%") for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = [c.rjust(w) if key in NUMERIC else c.ljust(w)
                 for c, w, (key, _, _) in zip(line, widths, COLUMNS)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def write_csv(rows: list[dict], out) -> None:
    w = csv.writer(out)
    keys = [key for key, _, _ in COLUMNS]
    w.writerow(keys)
    for r in rows:
        w.writerow(["" if r[k] is None else r[k] for k in keys])


def runs_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ffpipe runs", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A table of existing runs: schedule, dataset, layers, seed, accuracy "
                    "(goodness and head), wall time, samples/s, ff-pipeline version, and "
                    "whether each run finished.",
        epilog="example: ffpipe runs runs/ --sort accuracy --csv > runs.csv")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="a run folder, or a folder with run folders below it")
    p.add_argument("--csv", action="store_true", help="write CSV (raw values) to stdout")
    p.add_argument("--sort", choices=SORTS, default="group",
                   help="group: by dataset, layers, schedule, seed; accuracy: best first; "
                        "started: oldest first; path")
    a = p.parse_args(argv)
    runs = []
    for d in a.dirs:
        root = Path(d)
        if not root.is_dir():
            raise UserError(f"{root}: no such folder; give run folders or folders of runs")
        found = find_runs(root)
        if not found:
            raise UserError(f"{root}: no runs in it (a run folder holds config.json or "
                            f"summary.json)")
        runs += [f for f in found if f not in runs]
    rows = sort_rows([run_row(f) for f in runs], a.sort)
    if a.csv:
        write_csv(rows, sys.stdout)
    else:
        print(format_table(rows))
    return 0
