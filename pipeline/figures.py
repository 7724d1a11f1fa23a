"""What the figures of `ffpipe drift`, `ffpipe compare` and `ffpipe plot` share: a
matplotlib Figure on the Agg canvas, legends kept off the data, the learning-rate-decay
marker, a warning written into the figure itself.

Figure + FigureCanvasAgg directly, not pyplot: no global backend switch, no GUI needed,
nothing left open in a global figure registry; the functions that draw return the Figure,
so a test can read the plotted numbers back from its artists.
"""

from __future__ import annotations

import math
from pathlib import Path

DECAY_LABEL = "learning-rate decay starts"


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def mark_decay(ax, xs: list[float]) -> None:
    """A dotted vertical line where the learning rate starts to decay (labelled once, for
    the legend)."""
    for i, x in enumerate(sorted(set(xs))):
        ax.axvline(x, color="0.35", linestyle=":", linewidth=1.2,
                   label=DECAY_LABEL if i == 0 else None)


def figure_legend(fig, axes, where: str = "outside lower center", ncols: int = 4) -> None:
    """One legend for the whole figure, outside every axes: the entries of all panels,
    each label once."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc=where, ncols=ncols, fontsize=9,
                   frameon=False)


def with_banner(fig, text: str | None, height: float = 0.06):
    """`fig`, or when there is something to warn about, the part of `fig` below a banner
    that says it (a reader of the PNG alone sees it; the caller prints it as well). Draw
    the panels, title and legend into what this returns."""
    if not text:
        return fig
    top, body = fig.subfigures(2, 1, height_ratios=[height, 1 - height])
    top.text(0.5, 0.5, "WARNING: " + text, ha="center", va="center", fontsize=11,
             color="darkred", wrap=True,
             bbox={"boxstyle": "round,pad=0.5", "facecolor": "#fff3cd", "edgecolor": "darkred"})
    return body


def readable_log_axis(ax) -> None:
    """Log-scale y ticks as plain numbers (20, 50, 100), not 2x10^1; the 2-3-5 minor
    ticks are labelled too when the data span less than two decades."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.get_ylim()
    few = hi / lo < 100

    def minor(v, _):
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
        return f"{v:g}" if few and mantissa in (2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def thousands_on_x(ax) -> None:
    """240,000 rather than 240000 (or 2.4e5) on an x axis of training images."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def time_panel(ax, title: str, xlabel: str, ylabel: str, *, samples: bool,
               decay_xs: list[float], x_end: float | None, pad: float = 0.0) -> None:
    """Finish a panel whose x is training time: title, labels (thousands separated when x
    counts images), grid; where it has data, the decay marks and x from 0 to the end of
    the run (`pad`: a fraction of it left of 0, so a point at 0 is not cut in half)."""
    ax.set_title(title, fontsize=10.5)
    ax.set_xlabel(xlabel)
    if samples:
        thousands_on_x(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not ax.lines:
        no_data(ax)
        return
    mark_decay(ax, decay_xs)
    if x_end:
        ax.set_xlim(-pad * x_end, 1.02 * x_end)


def no_data(ax, why: str = "no data") -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", color="0.4", transform=ax.transAxes)
