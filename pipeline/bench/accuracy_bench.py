"""Time to accuracy: how long a schedule takes to first reach each test-accuracy target.

Each seed is an ordinary run; its `sink.jsonl` already holds the streamed evaluations
(every `train.eval_every` steps), so the benchmark adds no work: the time of the first
evaluation at or above a target is read from the log. Times are seconds since the run
started, so they include what a user waits for: process start-up for a pipelined run,
and the streamed evaluations themselves. Medians over seeds.
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.processes import train
from pipeline.runlog import read_jsonl


def time_to_targets(records: list[dict], targets: list[float]) -> dict[float, float | None]:
    """{target: seconds of the first eval record with test_accuracy >= target, or None}."""
    evals = sorted((r for r in records if r.get("kind") == "eval"
                    and r.get("test_accuracy") is not None), key=lambda r: r["time"])
    return {t: next((r["time"] for r in evals if r["test_accuracy"] >= t), None)
            for t in targets}


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


def run_accuracy_bench(cfg: RunConfig, seeds: list[int], targets: list[float], out: str,
                       stream=sys.stdout) -> dict:
    """Train once per seed into OUT/s{seed}; print a row per seed and the medians."""
    rows = []
    head = "seed  " + "  ".join(f"t{100 * t:g}%" for t in targets) + "  final %  wall s"
    print(f"time to accuracy: {cfg.train.schedule}, layers {cfg.model.layers}, "
          f"{cfg.data.dataset}, seconds since the run started", file=stream)
    print(head, file=stream, flush=True)
    for seed in seeds:
        run = copy.deepcopy(cfg)
        run.train.seed, run.out = seed, str(Path(out) / f"s{seed}")
        summary = train(run)
        reached = time_to_targets(read_jsonl(Path(run.out) / "sink.jsonl"), targets)
        rows.append({"seed": seed, "reached": reached, "final": summary["test_accuracy"],
                     "wall": summary["wall_seconds"]})
        print(f"{seed:4d}  " + "  ".join(f"{_fmt(reached[t]):>{len(f't{100 * t:g}%')}}"
                                          for t in targets)
              + f"  {100 * summary['test_accuracy']:7.2f}  {summary['wall_seconds']:6.0f}",
              file=stream, flush=True)
    medians = {}
    for t in targets:
        got = [r["reached"][t] for r in rows if r["reached"][t] is not None]
        # A target missed by some seed has no honest median: say how many reached it.
        medians[t] = statistics.median(got) if len(got) == len(rows) else None
        print(f"median time to {100 * t:g} %: "
              + (f"{medians[t]:.0f} s" if medians[t] is not None
                 else f"not reached by every seed ({len(got)} of {len(rows)})"), file=stream)
    final = statistics.median(r["final"] for r in rows)
    wall = statistics.median(r["wall"] for r in rows)
    print(f"median final accuracy {100 * final:.2f} %, median wall {wall:.0f} s", file=stream,
          flush=True)
    return {"rows": rows, "median_seconds": medians, "median_final": final, "median_wall": wall}
