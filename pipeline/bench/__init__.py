"""`ffpipe bench pipeline|transport|drift|accuracy`: benchmarks that print numbers.

Speed targets live here, never in timed unit tests: every figure is a median over
repetitions, next to a baseline measured in the same run.
"""

from __future__ import annotations


from pipeline.bench.accuracy_bench import run_accuracy_bench
from pipeline.bench.pipeline_bench import run_drift_bench, run_pipeline_bench
from pipeline.bench.transport_bench import run_transport_bench
from pipeline.datasets import load_dataset
from pipeline.errors import ConfigError, UsageParser
from pipeline.overrides import config_from_argv

UNITS = {"K": 1 << 10, "M": 1 << 20}


def parse_sizes(text: str) -> list[int]:
    """'64K,1M,4096' -> bytes."""
    sizes = []
    for item in text.split(","):
        item = item.strip().upper()
        scale = UNITS.get(item[-1:], 1)
        digits = item[:-1] if item[-1:] in UNITS else item
        if not digits.isdigit() or int(digits) == 0:
            raise ConfigError(f"--sizes: {item!r} is not a size; use e.g. 64K,1M,4096")
        sizes.append(int(digits) * scale)
    return sizes


def parse_numbers(text: str, flag: str, kind):
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def bench_main(argv: list[str]) -> int:
    p = UsageParser(prog="ffpipe bench", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["pipeline", "transport", "drift", "accuracy"])
    p.add_argument("--steps", type=int, default=200, help="train steps per measurement")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--seconds", type=float, default=1.0, help="transport: seconds per round")
    p.add_argument("--sizes", default="64K,1M,4M,16M", help="transport: message sizes")
    p.add_argument("--transports", default="memcpy,local,zmq-tcp,zmq-ipc,dist-gloo")
    p.add_argument("--seeds", default="0,1,2", help="accuracy: one run per seed")
    p.add_argument("--targets", default="94,95,96,97", help="accuracy: test accuracy %% "
                   "targets")
    p.add_argument("--runs", default="runs/bench-accuracy", help="accuracy: the runs go "
                   "to RUNS/s{seed} (reused folders are refused, as for ffpipe train)")
    a, rest = p.parse_known_args(argv)
    if a.what == "transport":
        if rest:
            raise ConfigError(f"bench transport: unknown option(s) {' '.join(rest)}; it "
                              f"takes --seconds, --sizes and --transports")
        run_transport_bench(parse_sizes(a.sizes), a.transports.split(","), a.seconds)
        return 0
    cfg = config_from_argv(rest)
    if a.what == "accuracy":
        run_accuracy_bench(cfg, parse_numbers(a.seeds, "--seeds", int),
                           [t / 100 for t in parse_numbers(a.targets, "--targets", float)],
                           a.runs)
        return 0
    if a.what == "drift":
        run_drift_bench(cfg, a.steps, a.reps)
        return 0
    run_pipeline_bench(cfg, load_dataset(cfg.data), a.steps, a.reps)
    return 0
