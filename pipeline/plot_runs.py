"""`ffpipe plot RUN_DIR... [--out FILE.png]`: accuracy and each stage's loss over training,
for one run or several overlaid (other schedules, seeds, batch sizes: the x axis is epochs
or training images, never raw steps, so runs line up).

Reads only what every schedule writes (`pipeline.records`): the sink's "eval" records in
sink.jsonl (goodness accuracy, and the softmax head's where it was trained) and the
"train" records in stage{k}.jsonl (mean loss since the previous record). Backprop writes
the whole network's cross-entropy as every stage's loss; its legend entry says so.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from pipeline.errors import UserError
from pipeline.figures import figure_legend, new_figure, readable_log_axis, save, time_panel
from pipeline.run_folder import X_UNITS, RunLogs, common_unit, read_run, record_step, x_label

log = logging.getLogger(__name__)

DEFAULT_OUT = "RUN_DIR/training.png"  # shown by --help; means "next to the one run"
ACCURACY = (("test_accuracy", "-"), ("head_accuracy", "--"))  # (sink key, line style)


# Settings that tell overlaid runs apart where they differ: (RunFacts field, as written).
SETTINGS = (("dataset", "{}"), ("layers", "layers {}"), ("normalization", "{} normalization"),
            ("batch_size", "batch {}"), ("epochs", "{} epochs"))


def _setting(facts, field: str) -> str | None:
    value = getattr(facts, field)
    if value is None:
        return None
    return dict(SETTINGS)[field].format("-".join(map(str, value)) if isinstance(value, list)
                                        else value)


def run_names(runs: list[RunLogs]) -> list[str]:
    """One legend entry per run: schedule, seed, the settings in which the runs differ,
    and the run folder."""
    differ = [f for f, _ in SETTINGS if len({_setting(r.facts, f) for r in runs}) > 1]
    names = []
    for r in runs:
        name = r.facts.label([s for f in differ if (s := _setting(r.facts, f))])
        if r.facts.schedule == "backprop":
            name += "; loss = network cross-entropy"
        names.append(name)
    return names


def shared_settings(runs: list[RunLogs]) -> str:
    """What all the runs have in common, for the title."""
    same = [_setting(runs[0].facts, f) for f, _ in SETTINGS
            if len({_setting(r.facts, f) for r in runs}) == 1]
    return ", ".join(s for s in same if s)


def training_figure(runs: list[RunLogs], unit: str = "epochs", log_loss: bool = True,
                    title: str | None = None):
    """Panel 1: test accuracy of every run (solid: goodness, dashed: softmax head);
    then one panel per stage: its training loss. One colour per run throughout. Returns
    (the matplotlib Figure, the x unit used, a warning or None)."""
    unit, note = common_unit([r.facts for r in runs], unit)
    n_stages = max(max(r.train, default=-1) + 1 for r in runs)
    cols = 2 if n_stages else 1
    rows = math.ceil((1 + n_stages) / cols)
    fig = new_figure(6.5 * cols, 3.6 * rows + 0.9 + 0.25 * len(runs))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[1 + n_stages:]:
        ax.set_axis_off()

    names = run_names(runs)
    ax, head_drawn = axes[0], False
    for i, run in enumerate(runs):
        f = run.facts
        for key, style in ACCURACY:
            pts = [(f.x(record_step(r), unit), 100 * r[key]) for r in run.evals
                   if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i % 10}", linestyle=style, marker="o",
                        markersize=3.5, label=names[i])
                head_drawn |= style != "-"
    _panel(ax, runs, unit, "Test accuracy (solid: goodness; dashed: softmax head)"
           if head_drawn else "Test accuracy (goodness)", "test accuracy %")

    for k in range(n_stages):
        ax = axes[1 + k]
        for i, run in enumerate(runs):
            f = run.facts
            pts = [(f.x(record_step(r), unit), r["loss"]) for r in run.train.get(k, [])
                   if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i % 10}", linewidth=1.1, label=names[i])
        if log_loss and ax.lines and all(y > 0 for line in ax.lines for y in line.get_ydata()):
            ax.set_yscale("log")
            readable_log_axis(ax)
        _panel(ax, runs, unit, f"Stage {k}: training loss (mean per log interval)",
               "loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))

    if title is None:
        title = ("Training of " + runs[0].facts.describe() if len(runs) == 1 else
                 f"Training of {len(runs)} runs: {shared_settings(runs)}".rstrip(": "))
    fig.suptitle(title, fontsize=12)
    figure_legend(fig, axes, ncols=1 if len(runs) > 2 else 2)
    return fig, unit, note


def _panel(ax, runs: list[RunLogs], unit: str, title: str, ylabel: str) -> None:
    ends = [r.facts.x(r.facts.total_steps, unit) for r in runs
            if r.facts.total_steps and r.facts.knows(unit)]
    time_panel(ax, title, x_label(unit, runs[0].facts if len(runs) == 1 else None), ylabel,
               samples=unit == "samples", x_end=max(ends, default=None),
               decay_xs=[r.facts.x(s, unit) for r in runs for s in r.facts.decay_steps()])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ffpipe plot", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Accuracy and each stage's loss over training, from the JSONL logs of "
                    "one or more runs (overlaid, one colour per run).",
        epilog="example: ffpipe plot runs/a runs/b --out ab.png --x samples")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folder(s) written by ffpipe train --out")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.png",
                   help="where to write the figure; required for several runs")
    p.add_argument("--x", choices=X_UNITS, default="epochs",
                   help="x axis: epochs, or training images drawn (lines up runs with other "
                        "batch sizes or dataset sizes)")
    p.add_argument("--linear-loss", action="store_true", default=False,
                   help="loss on a linear axis instead of a log one")
    p.add_argument("--title", default="auto",
                   help="figure title; auto = the run's schedule, dataset, layers and seed")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    return p


def plot_main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.out == DEFAULT_OUT and len(a.run_dirs) > 1:
        raise UserError("several runs: say where the figure goes with --out FILE.png")
    if a.dpi < 10:
        raise UserError(f"--dpi: give at least 10, got {a.dpi}")
    out = Path(a.run_dirs[0]) / "training.png" if a.out == DEFAULT_OUT else Path(a.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the figure is a PNG; give a FILE.png path")
    runs = [read_run(d, "ffpipe plot") for d in a.run_dirs]
    fig, unit, note = training_figure(runs, a.x, not a.linear_loss,
                                      None if a.title == "auto" else a.title)
    if note:
        log.warning(note)
    print(f"wrote {save(fig, out, dpi=a.dpi)} ({len(runs)} run{'s' * (len(runs) > 1)}, "
          f"x in {unit})")
    return 0
