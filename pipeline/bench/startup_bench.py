"""`ffpipe bench startup`: where the start-up of a pipelined run goes, process by process.

Runs the real `ffpipe train` (a short run: one epoch unless `--epochs` says otherwise)
`reps` times and prints, from each run's processes.jsonl, the median per process of

    started      command start -> the OS started the process
    imports      started -> it entered `run_process` (imports, unpickling, wiring)
    set-up       entered -> its role was built (a stage: layer and optimizer)
    first train  command start -> its first train message (in for the sink, out for the
                 source and the stages: a stage's first step is done)

with its peak RSS, CPU seconds and whether it imported torch._dynamo; then command start
-> launch (the launcher's own imports, data and checks), -> the first child started (the
fork server's imports, local transport) and -> the first train message at the sink. Last, where imports go: `python -X importtime` of what a child imports, in
a fresh interpreter, summed by top-level package.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.bench.launched import launch, median_of
from pipeline.config import RunConfig, from_dict, to_dict

CHILD_IMPORTS = "import pipeline.processes.local"  # what the fork server preloads


def short_run(cfg: RunConfig, epochs_given: bool) -> RunConfig:
    cfg = from_dict(to_dict(cfg))
    if not epochs_given:
        cfg.train.epochs = 1
    cfg.train.eval_every = 0
    cfg.data.test_limit = cfg.pipeline.eval_batch
    return cfg


def process_phases(run) -> dict[str, dict]:
    """{process name: {phase: seconds}} of one run."""
    out = {}
    t0 = run.command_start
    for p in run.processes:
        if p.get("restarts"):
            continue
        name = "sink" if p["role"] == "sink" else (
            "source" if p["role"] == "source" else f"stage {p['index']}")
        first = p.get("first_train_out", p.get("first_train_in"))
        row = {"started": None if p.get("started") is None else p["started"] - t0,
               "imports": None if p.get("started") is None else p["entered"] - p["started"],
               "set-up": p["ready"] - p["entered"] if "ready" in p else None,
               "first train": None if first is None else first - t0,
               "peak RSS MiB": p.get("peak_rss_mb"), "CPU s": p.get("cpu_seconds"),
               "dynamo": float(bool(p.get("dynamo_imported")))}
        out[name] = {k: v for k, v in row.items() if v is not None}
    return out


def import_profile(statement: str = CHILD_IMPORTS, top: int = 6) -> list[tuple[str, float]]:
    """Seconds of import time per top-level package (self times summed) for `statement`
    in a fresh `python -P -X importtime`, largest first."""
    r = subprocess.run([sys.executable, "-P", "-X", "importtime", "-c", statement],
                       capture_output=True, text=True, timeout=300)
    by_package: dict[str, float] = {}
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:"):].split("|"))
        if not self_us.isdigit():
            continue  # the header line
        package = name.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(self_us) / 1e6
    return sorted(by_package.items(), key=lambda kv: -kv[1])[:top]


PHASES = ("started", "imports", "set-up", "first train", "peak RSS MiB", "CPU s", "dynamo")


def run_startup_bench(cfg: RunConfig, reps: int, epochs_given: bool = False,
                      stream=sys.stdout) -> dict:
    run_cfg = short_run(cfg, epochs_given)
    print(f"startup bench: `ffpipe train` (pipelined, {cfg.pipeline.transport}, layers "
          f"{cfg.model.layers}, {run_cfg.train.epochs} epoch(s)), {reps} rep(s)",
          file=stream, flush=True)
    per_rep, totals = [], []
    with tempfile.TemporaryDirectory(prefix="ffbench") as tmp:
        for rep in range(reps):
            run = launch(run_cfg, Path(tmp) / f"rep{rep}")
            per_rep.append(process_phases(run))
            first = run.first_batch()
            started = [p["started"] for p in run.processes if p.get("started")]
            totals.append({"launch": first.get("launch_s"),
                           "children started": min(started) - run.command_start
                           if started else None,
                           "first step of stage 0": first.get("stage0_first_step_s"),
                           "first train message at the sink": first.get("sink_first_train_s"),
                           "whole command": run.wall_s})
            print(f"  rep {rep + 1}: first train message at the sink "
                  f"{totals[-1]['first train message at the sink']:.1f} s after the "
                  f"command started, whole command {run.wall_s:.1f} s", file=stream,
                  flush=True)
    names = list(per_rep[0])
    medians = {n: median_of([r[n] for r in per_rep if n in r]) for n in names}
    print(f"\nper process, median of {reps} (seconds; 'dynamo': share of runs in which "
          f"it imported torch._dynamo):", file=stream)
    print("  " + f"{'process':9s}" + "".join(f"{p:>13s}" for p in PHASES), file=stream)
    order = sorted(names, key=lambda n: (n != "source", n == "sink", n))
    for n in order:
        m = medians[n]
        print("  " + f"{n:9s}" + "".join(
            f"{m[p]:13.{0 if p == 'peak RSS MiB' else 2}f}" if p in m else f"{'-':>13s}"
            for p in PHASES), file=stream)
    total = median_of(totals)
    print("\nseconds from the command's start, median: " + ", ".join(
        f"{k} {v:.1f}" for k, v in total.items()), file=stream)
    profile = import_profile()
    print(f"\nimport time of what a child imports (`{CHILD_IMPORTS}`, fresh interpreter, "
          f"python -X importtime, self time by package): " +
          ", ".join(f"{name} {s:.2f} s" for name, s in profile), file=stream, flush=True)
    return {"processes": medians, "totals": total, "imports": profile}
