"""`ffpipe bench pipeline|transport|drift|accuracy|roofline|scaling|startup|compile`: benchmarks
that print numbers.

Speed targets live here, never in timed unit tests: every figure is a median over
repetitions, next to a baseline measured in the same run.
"""

from __future__ import annotations

from pipeline.bench.accuracy_bench import run_accuracy_bench
from pipeline.bench.compile_bench import run_compile_bench
from pipeline.bench.pipeline_bench import run_drift_bench, run_pipeline_bench
from pipeline.bench.roofline import run_roofline_bench
from pipeline.bench.scaling import run_scaling_bench
from pipeline.bench.startup_bench import run_startup_bench
from pipeline.bench.transport_bench import run_transport_bench
from pipeline.config import TrainConfig
from pipeline.datasets import load_dataset
from pipeline.command_line import command_parser
from pipeline.errors import ConfigError
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


def parse_precisions(text: str) -> list[str]:
    allowed = TrainConfig.__dataclass_fields__["precision"].metadata["choices"]
    out = [v.strip() for v in text.split(",") if v.strip()]
    for v in out:
        if v not in allowed:
            raise ConfigError(f"--precisions: {v!r} is not one of {', '.join(allowed)}")
    return out


def bench_main(argv: list[str]) -> int:
    p = command_parser(
        "ffpipe bench", " ".join(__doc__.split("\n\n")[0].split()),
        epilog="Any other option is a `ffpipe train` override for the benchmarked config "
               "(not for transport).\n\nexamples:\n  ffpipe bench roofline --reps 3\n"
               "  ffpipe bench accuracy --dataset mnist --data-dir DIR --seeds 0,1,2")
    p.add_argument("what", choices=["pipeline", "transport", "drift", "accuracy",
                                     "roofline", "scaling", "startup", "compile"],
                   help="which benchmark: pipeline (pipelined vs stages alone vs lockstep), "
                        "transport (GB/s per hop), drift (probe overhead), accuracy (time to "
                        "accuracy targets), roofline (FLOP/s vs GEMM-only), scaling (stages x "
                        "widths x batches), startup (where start-up goes), compile (does "
                        "torch.compile of the step pay back its compile time)")
    p.add_argument("--steps", type=int, default=None, help="train steps per measurement "
                   "(default: pipeline and drift 200; roofline and scaling: at least 100 and "
                   "50 steps in each pipelined run)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument("--seconds", type=float, default=1.0, help="transport: seconds per "
                   "round; roofline, scaling, compile: seconds per timed in-process measurement")
    p.add_argument("--precisions", default="", help="roofline: train.precision values "
                   "measured besides the config's (default: fp32,bf16, and fp16 on CUDA)")
    p.add_argument("--stages", default="1,2,3,4", help="scaling: numbers of stages")
    p.add_argument("--widths", default="500,1000,2000,4000", help="scaling: layer widths")
    p.add_argument("--batches", default="50,200,1000", help="scaling: batch sizes")
    p.add_argument("--sizes", default="64K,1M,4M,16M", help="transport: message sizes")
    p.add_argument("--transports", default="memcpy,local,zmq-tcp,zmq-ipc,dist-gloo",
                   help="transport: which hops to measure")
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
    if a.what == "startup":
        run_startup_bench(cfg, a.reps, epochs_given=any(
            r.split("=")[0] in ("--epochs", "--train.epochs") for r in rest))
        return 0
    if a.what == "accuracy":
        run_accuracy_bench(cfg, parse_numbers(a.seeds, "--seeds", int),
                           [t / 100 for t in parse_numbers(a.targets, "--targets", float)],
                           a.runs)
        return 0
    if a.what == "drift":
        run_drift_bench(cfg, a.steps or 200, a.reps)
        return 0
    ds = load_dataset(cfg.data)
    if a.what == "roofline":
        run_roofline_bench(cfg, len(ds.x_train), a.steps or 100, a.reps, a.seconds,
                           parse_precisions(a.precisions))
        return 0
    if a.what == "compile":
        run_compile_bench(cfg, len(ds.x_train), a.reps, a.seconds)
        return 0
    if a.what == "scaling":
        run_scaling_bench(cfg, ds.input_dim, len(ds.x_train),
                          *(parse_numbers(getattr(a, n), f"--{n}", int)
                            for n in ("stages", "widths", "batches")),
                          a.steps or 50, a.reps, a.seconds)
        return 0
    run_pipeline_bench(cfg, ds, a.steps or 200, a.reps)
    return 0
