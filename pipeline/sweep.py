"""`ffpipe sweep`: a grid of settings x seeds, one table, for choosing defaults by
measurement.

    ffpipe sweep --grid train.lr 1e-3 3e-3 --grid train.loss ff symba --seeds 0,1,2 \\
        --schedule lockstep --epochs 30 --out runs/sweep/lr-loss

Every cell of the grid (the cartesian product of the `--grid` axes) is trained once per
seed, each run an ordinary `ffpipe train` in its own process, `--jobs` at a time (each
with `threads / jobs` torch threads), into OUT/<cell>/s<seed>. A run whose summary.json
was written under the same config is reused, so an interrupted sweep picks up where it
stopped and a wider grid re-runs only its new cells. The table (OUT/sweep.md, also
printed; OUT/sweep.csv with every run) is sorted by mean test accuracy.

Tune on the proxy split (the default mnist-5k 4,000 / 1,000), never on a held-out test
set: the table reports test accuracy of whatever the config evaluates on.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.command_line import command_parser
from pipeline.config import RunConfig, load_config, set_value, to_dict, validate
from pipeline.errors import ConfigError
from pipeline.overrides import parse_overrides
from pipeline.processes.run_dir import recorded_config


def parse_args(argv: list[str]):
    p = command_parser(
        "ffpipe sweep", "train every cell of a settings grid for every seed; one table",
        epilog="Any other option is a `ffpipe train` override applied to every run.\n\n"
               "example:\n  ffpipe sweep --grid train.loss ff symba --grid train.lr 1e-3 "
               "3e-3 --seeds 0,1,2 --jobs 2 --schedule lockstep --eval-every 0")
    p.add_argument("--grid", nargs="+", action="append", default=[], metavar="KEY VALUE",
                   help="one axis: a config key and its values, e.g. --grid train.lr 1e-3 "
                        "3e-3; repeat for more axes (default: one cell, the config itself)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads shared by the runs at once")
    p.add_argument("--out", default="runs/sweep", help="folder of the sweep's runs")
    args, rest = p.parse_known_args(argv)
    path, overrides = parse_overrides(rest)
    if any(k in ("out", "train.seed") for k, _ in overrides):
        raise ConfigError("--out and --seed: the sweep sets them per run; use --out for the "
                          "sweep's folder and --seeds")
    args.axes = []
    for axis in args.grid:
        if len(axis) < 2:
            raise ConfigError(f"--grid {axis[0]}: give the key and at least one value")
        args.axes.append((axis[0], axis[1:]))
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: give integers like 0,1,2, got {args.seeds!r}") from None
    if not args.seeds or args.jobs < 1 or args.threads < 1:
        raise ConfigError("--seeds needs one seed or more; --jobs and --threads must be >= 1")
    base = load_config(path, overrides)
    base.train.threads = max(args.threads // args.jobs, 1)
    return args, base


def cells(base: RunConfig, axes: list[tuple[str, list[str]]]) -> list[tuple[str, RunConfig]]:
    """(name, config) per grid cell, every cell validated before any run starts."""
    out = []
    for values in itertools.product(*[vals for _, vals in axes]):
        cfg = copy.deepcopy(base)
        for (key, _), value in zip(axes, values):
            set_value(cfg, key, value)
        validate(cfg)
        name = ",".join(f"{key.split('.')[-1]}={value}"
                        for (key, _), value in zip(axes, values)) or "base"
        out.append((name.replace("/", "_"), cfg))
    return out


def plan(args, base: RunConfig) -> list[dict]:
    """Every run of the sweep: its cell, seed, config and whether it is already done."""
    runs = []
    for name, cell in cells(base, args.axes):
        for seed in args.seeds:
            cfg = copy.deepcopy(cell)
            cfg.train.seed, cfg.out = seed, str(Path(args.out) / name / f"s{seed}")
            done = ((Path(cfg.out) / "summary.json").exists()
                    and _comparable(recorded_config(Path(cfg.out) / "config.json"))
                    == _comparable(json.loads(json.dumps(to_dict(cfg)))))
            runs.append({"cell": name, "seed": seed, "cfg": cfg, "done": done})
    return runs


def _comparable(d: dict | None) -> dict | None:
    """A recorded config as the sweep compares it: the same run whatever threads it got."""
    if d is None:
        return None
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()
         if k != "provenance"}
    d.get("train", {}).pop("threads", None)
    d.get("pipeline", {}).pop("overwrite", None)  # how it was started, not what it is
    return d


def start(run: dict, folder: Path) -> subprocess.Popen:
    """`ffpipe train --config <the run's exact config>` in its own process."""
    cfg_file = folder / "configs" / (Path(run["cfg"].out).relative_to(folder).as_posix()
                                     .replace("/", "__") + ".json")
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(json.dumps(to_dict(run["cfg"])))
    log = open(cfg_file.with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, "-P", "-m", "pipeline", "train", "--config",
                             str(cfg_file), "--overwrite"], stdout=log, stderr=log)


def run_all(runs: list[dict], folder: Path, jobs: int) -> None:
    todo = [r for r in runs if not r["done"]]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already done -> {folder}",
          flush=True)
    active: list[tuple[dict, subprocess.Popen]] = []
    finished, t0 = 0, time.monotonic()
    try:
        while todo or active:
            while todo and len(active) < jobs:
                run = todo.pop(0)
                active.append((run, start(run, folder)))
            time.sleep(0.5)  # poll: several children, no single one to wait on
            for run, proc in list(active):
                if proc.poll() is None:
                    continue
                active.remove((run, proc))
                finished += 1
                acc = _summary(run).get("test_accuracy")
                print(f"[{time.strftime('%H:%M:%S')}] {finished}/{finished + len(todo) + len(active)}"
                      f" {run['cell']} seed {run['seed']}: "
                      + (f"{100 * acc:.2f} %" if acc is not None else
                         f"failed (exit {proc.returncode}; see {folder}/configs)")
                      + f"  [{time.monotonic() - t0:.0f} s]", flush=True)
    finally:
        for _, proc in active:
            proc.terminate()


def _summary(run: dict) -> dict:
    try:
        return json.loads((Path(run["cfg"].out) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def table(runs: list[dict], folder: Path) -> str:
    by_cell: dict[str, list[dict]] = {}
    for run in runs:
        by_cell.setdefault(run["cell"], []).append({**_summary(run), "seed": run["seed"]})
    rows = []
    for cell, results in by_cell.items():
        accs = [100 * r["test_accuracy"] for r in results if r.get("test_accuracy") is not None]
        walls = [r["wall_seconds"] for r in results if r.get("wall_seconds") is not None]
        heads = [100 * r["head_accuracy"] for r in results if r.get("head_accuracy") is not None]
        rows.append((statistics.mean(accs) if accs else -1.0, cell, accs, walls, heads))
    rows.sort(key=lambda r: -r[0])
    lines = ["| cell | seeds | test acc % (each) | mean ± sd | head % (mean) | wall s (median) |",
             "|---|---|---|---|---|---|"]
    for mean, cell, accs, walls, heads in rows:
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        head = f"{statistics.mean(heads):.2f}" if heads else "–"
        wall = f"{statistics.median(walls):.0f}" if walls else "–"
        lines.append(f"| {cell} | {len(accs)} | {', '.join(f'{a:.1f}' for a in accs)} | "
                     f"{mean:.2f} ± {sd:.2f} | {head} | {wall} |")
    with open(folder / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "seed", "test_accuracy", "head_accuracy", "wall_seconds", "out"])
        for run in runs:
            s = _summary(run)
            w.writerow([run["cell"], run["seed"], s.get("test_accuracy"),
                        s.get("head_accuracy"), s.get("wall_seconds"), run["cfg"].out])
    text = "\n".join(lines) + "\n"
    (folder / "sweep.md").write_text(text)
    return text


def sweep_main(argv: list[str]) -> int:
    args, base = parse_args(argv)
    runs = plan(args, base)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    run_all(runs, folder, args.jobs)
    print(table(runs, folder), end="")
    return 0


if __name__ == "__main__":
    sys.exit(sweep_main(sys.argv[1:]))
