"""`ffpipe` (also `python -m pipeline`): the command table and its dispatch.

Every command is a `main(argv) -> int` named in `COMMANDS` by one line; its module is
imported only when it runs, so `ffpipe --help`, `ffpipe train --help` and the one-line
error of a bad option come back without importing torch (seconds on a small machine).
A command's own options go through `command_line.command_parser` (help on stdout, defaults
shown, "did you mean") or, for `train`, through `overrides` and `train_help`.

Errors a user can cause are reported in one line (`ffpipe: error: ...`) with exit code 2;
Ctrl-C exits 130; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Callable

from pipeline import __version__
from pipeline.command_line import command_parser
from pipeline.config import load_config
from pipeline.dataset_info import DATASETS
from pipeline.errors import StageFailed, UserError, did_you_mean
from pipeline.overrides import config_from_argv
from pipeline.train_help import train_help


def train_main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(train_help(), end="")
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


def worker_parser():
    """Only for --help: `processes.worker` parses these flags itself, with the rest as
    `ffpipe train` options (and FFPIPE_* variables)."""
    p = command_parser(
        "ffpipe worker",
        "One process of a cluster: the source, stage K or the sink, on the zmq transport "
        "or as a torchrun rank (--transport dist: the role comes from the rank). Docker "
        "compose, launch/zmq_local.sh and `ffpipe train --transport zmq` start these.",
        usage="ffpipe worker [-h] [--role {source,stage,sink}] [--index K] [--restart N]\n"
              "                     [--config FILE] [TRAIN OPTIONS ...]",
        epilog="Every `ffpipe train` option works here too (`ffpipe train --help`), and so "
               "do FFPIPE_* variables: FFPIPE_<SHORT_FLAG> (FFPIPE_EPOCHS=5) or "
               "FFPIPE_<SECTION>__<KEY> (FFPIPE_NET__BASE_PORT=5600); options win over "
               "variables, variables over --config.\n\nexample:\n"
               "  FFPIPE_ROLE=stage FFPIPE_INDEX=1 ffpipe worker --transport zmq "
               "--config runs/z/config.json")
    p.add_argument("--role", choices=("source", "stage", "sink"), default="$FFPIPE_ROLE",
                   help="what this process plays")
    p.add_argument("--index", metavar="K", default="$FFPIPE_INDEX or 0",
                   help="which stage, 0..(number of layers - 1)")
    p.add_argument("--restart", metavar="N", default=0,
                   help="this worker replaces one that died; N counts the restarts (the "
                        "launcher passes it)")
    p.add_argument("--config", metavar="FILE", default="$FFPIPE_CONFIG",
                   help="a TOML file or the run's config.json")
    return p


def worker_main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        worker_parser().print_help()
        return 0
    from pipeline.processes.worker import worker_main as run_worker
    return run_worker(argv)


def drift_main(argv: list[str]) -> int:
    p = command_parser("ffpipe drift", "drift.png and report.md from a run's logs "
                       "(stage{k}.jsonl, sink.jsonl), written into the run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (what --out named)")
    p.add_argument("--watch", action="store_true", help="follow a live run: redraw the "
                   "figure as new records arrive, until Ctrl-C")
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                   help="--watch: seconds between redraws")
    a = p.parse_args(argv)
    from pipeline.drift.report import make_report, watch
    if a.watch:
        watch(a.run_dir, interval=a.interval)
        return 0
    png, md = make_report(a.run_dir)
    print(f"wrote {png} and {md}")
    return 0


def keys_main(argv: list[str]) -> int:
    p = command_parser("ffpipe keys", "CURVE key pairs for the zmq transport: one for the "
                       "receivers, one for the senders. Give every worker --net.curve_dir=DIR; "
                       "anyone who can read DIR can join the pipeline.")
    p.add_argument("dir", metavar="DIR", help="folder to write the key files into")
    a = p.parse_args(argv)
    from pipeline.transport.zmq_keys import generate_keys
    generate_keys(a.dir)
    print(f"wrote CURVE keys to {a.dir}; pass --net.curve_dir={a.dir} to every worker")
    return 0


def data_main(argv: list[str]) -> int:
    p = command_parser("ffpipe data", "Write a registered dataset as the four MNIST IDX "
                       "files (gzipped), readable by --dataset mnist --data-dir OUT_DIR.")
    p.add_argument("action", choices=["export-idx"], help="what to do")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the IDX files")
    p.add_argument("--dataset", default="mnist-5k", choices=DATASETS,
                   help="dataset to export (28x28 images only)")
    p.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="mnist-5k: images in the train split (default: the config's, 4000)")
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


@dataclass(frozen=True)
class Command:
    run: str | Callable[[list[str]], int]  # "module:function" (imported when it runs) or a function
    help: str

    def function(self) -> Callable[[list[str]], int]:
        if callable(self.run):
            return self.run
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


# One line per command: `ffpipe NAME ARGS...` runs `function(ARGS)`.
COMMANDS = {
    "train": Command(train_main, "train a network (`ffpipe train --help` lists every option)"),
    "worker": Command(worker_main, "one process of a cluster: the source, stage K or the sink"),
    "drift": Command(drift_main, "plot and tabulate drift from a run folder"),
    "compare": Command("pipeline.compare:compare_main",
                       "schedules x normalizations side by side, plus linear probes"),
    "bench": Command("pipeline.bench:bench_main",
                     "pipeline / transport / drift-overhead / accuracy benchmarks"),
    "keys": Command(keys_main, "CURVE keys for an encrypted zmq cluster"),
    "data": Command(data_main, "export a dataset as the four MNIST IDX files"),
    "evaluate": Command("pipeline.model_file:evaluate_main",
                        "accuracy of a trained run on any dataset of matching shape"),
    "predict": Command("pipeline.model_file:predict_main",
                       "predicted labels and per-label goodness for IDX or .npy images"),
    "runs": Command("pipeline.runs_table:runs_main", "a table of existing runs (--csv too)"),
    "plot": Command("pipeline.plot_runs:plot_main",
                    "accuracy and each stage's loss over training, runs overlaid"),
    "sweep": Command("pipeline.sweep:sweep_main",
                     "a settings grid x seeds, one table (choosing defaults by measurement)"),
}


def top_parser():
    width = max(len(name) for name in COMMANDS) + 2
    listing = "\n".join(f"  {name:{width}s}{c.help}" for name, c in COMMANDS.items())
    p = command_parser(
        "ffpipe", "Forward-Forward and layer-local learning as a pipeline of processes.",
        epilog=f"commands:\n{listing}\n\n`ffpipe COMMAND --help` shows a command's options; "
               "`python -m pipeline` is the same as `ffpipe`. From Python: `from pipeline "
               "import train, load_config` (README, \"Python API\").")
    p.add_argument("-V", "--version", action="version", version=f"ffpipe {__version__}")
    p.add_argument("command", metavar="COMMAND", nargs="?", help="one of the commands below")
    p.add_argument("args", metavar="ARGS", nargs="*", help="the command's own options")
    return p


def _terminated(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so launchers stop their children on the way out."""
    raise SystemExit(128 + signum)


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        top_parser().parse_args(argv)  # -h and -V exit here; a bad option raises
        raise UserError(f"give a command: {', '.join(COMMANDS)}; `ffpipe --help` says what "
                        f"each does")
    name = argv[0]
    if name not in COMMANDS:
        raise UserError(f"invalid choice: {name!r}{did_you_mean(name, COMMANDS)}; choose "
                        f"a command from {', '.join(COMMANDS)} (`ffpipe --help`)")
    if name != "worker":  # workers handle SIGTERM themselves (checkpoint, then exit)
        signal.signal(signal.SIGTERM, _terminated)
        # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop us.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return COMMANDS[name].function()(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return dispatch(argv)
    except (UserError, StageFailed) as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ffpipe: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help, --version, a parser's own error, SIGTERM
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        return exc.code or 0


if __name__ == "__main__":
    sys.exit(main())
