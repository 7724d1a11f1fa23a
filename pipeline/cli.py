"""`ffpipe` (also `python -m pipeline`): train, worker, drift, compare, bench, keys, data.

Errors a user can cause are reported in one line (`ffpipe: error: ...`) with exit code 2;
Ctrl-C exits 130; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pipeline.config import BOOL_FLAGS, SHORT_FLAGS, iter_fields, load_config, RunConfig
from pipeline.errors import StageFailed, UserError
from pipeline.overrides import config_from_argv

# Each command imports what it runs when it runs: `ffpipe --help` and the one-line errors
# of a bad option come back without importing torch (a few seconds on a small machine).

TRAIN_USAGE = """usage: ffpipe train [--config FILE.toml] [--section.key=VALUE ...] [short flags]

Short flags: {short}
Boolean flags: {bools}
All keys (section.key  default  help):
{keys}"""


def train_help() -> str:
    keys = "\n".join(f"  --{k:32s} {v!s:14s} {m.get('help', '')}"
                     for k, v, m in iter_fields(RunConfig()))
    return TRAIN_USAGE.format(short=", ".join(f"--{s}" for s in SHORT_FLAGS),
                              bools=", ".join(f"--{b}" for b in BOOL_FLAGS), keys=keys)


def cmd_train(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(train_help())
        return 0
    cfg = config_from_argv(argv)
    from pipeline.processes import train
    summary = train(cfg)
    if summary is None:  # a torchrun rank other than the sink
        return 0
    if summary.get("test_accuracy") is None:
        print(f"interrupted before a final evaluation -> {cfg.out}/summary.json")
        return 130 if summary.get("interrupted") else 1
    line = f"test accuracy {100 * summary['test_accuracy']:.2f}%"
    if "head_accuracy" in summary:
        line += f", head accuracy {100 * summary['head_accuracy']:.2f}%"
    print(f"{line} ({summary['schedule']}, {summary['train_samples']} samples per layer, "
          f"{summary['wall_seconds']:.1f}s) -> {cfg.out}/summary.json")
    return 0


def cmd_worker(argv: list[str]) -> int:
    from pipeline.processes.worker import worker_main
    return worker_main(argv)


def cmd_drift(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ffpipe drift",
                                description="drift.png and report.md from a run's logs")
    p.add_argument("run_dir")
    p.add_argument("--watch", action="store_true", help="follow a live run")
    p.add_argument("--interval", type=float, default=5.0)
    a = p.parse_args(argv)
    from pipeline.drift.report import make_report, watch
    if a.watch:
        watch(a.run_dir, interval=a.interval)
        return 0
    png, md = make_report(a.run_dir)
    print(f"wrote {png} and {md}")
    return 0


def cmd_compare(argv: list[str]) -> int:
    from pipeline.compare import compare_main
    return compare_main(argv)


def cmd_bench(argv: list[str]) -> int:
    from pipeline.bench import bench_main
    return bench_main(argv)


def cmd_keys(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ffpipe keys",
                                description="CURVE key pairs for the zmq transport")
    p.add_argument("dir")
    a = p.parse_args(argv)
    from pipeline.transport.zmq_keys import generate_keys
    generate_keys(a.dir)
    print(f"wrote CURVE keys to {a.dir}; pass --net.curve_dir={a.dir} to every worker")
    return 0


def cmd_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ffpipe data",
                                description="write a registered dataset as the four IDX files")
    p.add_argument("action", choices=["export-idx"])
    p.add_argument("out_dir")
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--train-size", type=int, default=None,
                   help="mnist-5k: images in the train split (default: the config default)")
    p.add_argument("--all-train", action="store_true",
                   help="mnist-5k: all 5,000 images as train files, no test files (add "
                        "the real t10k files to the folder yourself)")
    a = p.parse_args(argv)
    from pipeline.datasets import all_train, export_idx, load_dataset
    overrides = [("data.dataset", a.dataset)]
    if a.train_size:
        overrides.append(("data.train_size", a.train_size))
    cfg = load_config(None, overrides)
    ds = all_train(a.dataset) if a.all_train else load_dataset(cfg.data)
    paths = export_idx(ds, a.out_dir)
    print(f"wrote {len(ds.x_train)} train and {len(ds.x_test)} test images: "
          + ", ".join(str(p) for p in paths.values()))
    return 0


def _terminated(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so launchers stop their children on the way out."""
    raise SystemExit(128 + signum)


COMMANDS = {"train": cmd_train, "worker": cmd_worker, "drift": cmd_drift,
            "compare": cmd_compare, "bench": cmd_bench, "keys": cmd_keys, "data": cmd_data,
            "plot": lambda argv: __import__("pipeline.plot_runs", fromlist=["_"]).plot_main(argv)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: ffpipe {" + ",".join(COMMANDS) + "} ...\n"
              "  train    train a network (ffpipe train --help for every option)\n"
              "  worker   one process of a cluster (source, stage or sink)\n"
              "  drift    plot and tabulate drift from a run folder\n"
              "  compare  schedules x normalizations side by side\n"
              "  bench    pipeline / transport / drift-overhead benchmarks\n"
              "  keys     CURVE keys for the zmq transport\n"
              "  data     export a dataset as IDX files", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] != "worker":  # workers handle SIGTERM themselves (checkpoint, then exit)
        signal.signal(signal.SIGTERM, _terminated)
        # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop us.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except StageFailed as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ffpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
