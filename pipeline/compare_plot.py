"""compare.png: what `ffpipe compare` measured, as a figure. Test accuracy per schedule x
normalization and the linear probes per layer, as bars side by side (never one behind
another) with their values written on them, the spread over seeds, chance (1 / classes)
and a y axis from 0.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.figures import new_figure, no_data, save


def group_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by (schedule, normalization), in the order they come."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["schedule"], r["normalization"]), []).append(r)
    return groups


def compare_figure(rows: list[dict], n_stages: int, schedules: list[str],
                   normalizations: list[str], classes: int, title: str):
    """Test accuracy per schedule x normalization (bars: mean over seeds, error bars:
    +-1 sd where there are 2+ seeds, dots: each seed), and the linear probes per layer.
    Both axes start at 0 and show chance (1 / classes). Returns the matplotlib Figure."""
    fig = new_figure(15, 6.2)
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.15])
    groups = group_rows(rows)
    bars = {norm: [(s, [100 * r["test_accuracy"] for r in groups.get((s, norm), [])])
                   for s in schedules] for norm in normalizations}
    ax = left.subplots()
    _grouped_bars(ax, schedules, bars, colors={n: f"C{j}" for j, n in
                                               enumerate(normalizations)})
    _accuracy_axis(ax, classes, "test accuracy %")
    ax.set_title("Test accuracy by schedule and normalization", fontsize=11)
    left.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                ncols=len(normalizations) + 1, fontsize=9, frameon=False,
                title="layer-input normalization", title_fontsize=9)

    ax = right.subplots()
    probed = [r for r in rows if r["probe"]]
    if probed:
        per_seed = list({r["seed"]: r for r in probed}.values())  # one baseline per seed
        layers = [f"layer {k}" for k in range(n_stages)]
        series = {"raw input": [("input", [100 * r["input_probe"] for r in per_seed])],
                  "random frozen layers": [(layer, [100 * r["random_probe"][k]
                                                    for r in per_seed])
                                           for k, layer in enumerate(layers)]}
        for (schedule, _), runs in group_rows(probed).items():
            series[f"trained: {schedule}"] = [(layer, [100 * r["probe"][k] for r in runs])
                                              for k, layer in enumerate(layers)]
        colors = {"raw input": "0.55", "random frozen layers": "0.25",
                  **{name: f"C{i + len(normalizations)}" for i, name in
                     enumerate(list(series)[2:])}}
        _grouped_bars(ax, ["input"] + layers, series, colors)
        _accuracy_axis(ax, classes, "linear-probe test accuracy %")
        ax.set_title(f"Linear probe on each layer's activities "
                     f"({probed[0]['normalization']}, neutral label)", fontsize=11)
        right.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                     ncols=4, fontsize=9, frameon=False)
    else:
        ax.set_axis_off()
        no_data(ax, "linear probes off (--probe-epochs 0)")
    fig.suptitle(title, fontsize=12)
    return fig


def _grouped_bars(ax, groups: list[str], series: dict[str, list[tuple[str, list]]],
                  colors: dict[str, str]) -> None:
    """One bar per (group, series) side by side, never on top of each other: the mean,
    its value written on it, +-1 sd and each value as a dot where there are several."""
    slots = {g: [name for name, items in series.items() for group, vals in items
                 if group == g and vals] for g in groups}
    width = 0.84 / max(len(s) for s in slots.values())
    for name, items in series.items():
        xs, means, sds, dots = [], [], [], []
        for group, vals in items:
            if not vals:
                continue
            here = slots[group]
            xs.append(groups.index(group) + (here.index(name) - (len(here) - 1) / 2) * width)
            means.append(statistics.mean(vals))
            sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            dots += [(xs[-1], v) for v in vals] if len(vals) > 1 else []
        bars = ax.bar(xs, means, width * 0.9, color=colors[name], label=name)
        if any(sds):
            ax.errorbar(xs, means, yerr=sds, fmt="none", ecolor="black", elinewidth=1,
                        capsize=3)
        if dots:
            ax.plot(*zip(*dots), linestyle="none", marker="o", markersize=3,
                    markerfacecolor="white", markeredgecolor="black", markeredgewidth=0.7)
        for bar, m, sd in zip(bars, means, sds):
            ax.text(bar.get_x() + bar.get_width() / 2, m + sd + 1.5, f"{m:.1f}",
                    ha="center", va="bottom", rotation=90, fontsize=8)
    ax.set_xticks(range(len(groups)), groups)


def _accuracy_axis(ax, classes: int, ylabel: str) -> None:
    """0-100 % (room above for the value labels) and a chance line."""
    ax.axhline(100 / classes, color="firebrick", linestyle="--", linewidth=1,
               label=f"chance (1/{classes})", zorder=0)
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def write_png(path: Path, rows: list[dict], n_stages: int, schedules: list[str],
              normalizations: list[str], classes: int, base: RunConfig) -> Path:
    seeds = sorted({r["seed"] for r in rows})
    title = (f"ffpipe compare: {base.data.dataset}, layers "
             f"{'-'.join(map(str, base.model.layers))}, {base.train.epochs} epochs, "
             f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
             + ("  (bars: mean over seeds, error bars: \u00b11 sd, dots: each seed)"
                if len(seeds) > 1 else ""))
    fig = compare_figure(rows, n_stages, schedules, normalizations, classes, title)
    return save(fig, path, dpi=110)
