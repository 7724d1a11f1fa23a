"""compare.png from a compare's rows: each bar's height is the mean over its seeds and its
written value says so, the spread over seeds is drawn, no bar sits behind another,
chance is marked, the y axis starts at 0 and no legend lies over the bars."""

import statistics

import pytest
from matplotlib.container import BarContainer

from pipeline.compare_plot import compare_figure, write_png
from pipeline.config import RunConfig

SCHEDULES = ["backprop", "lockstep", "sequential", "pipelined"]
NORMS = ["rms", "none"]
ACC = {("backprop", "rms"): (0.958, 0.962), ("lockstep", "rms"): (0.930, 0.940),
       ("sequential", "rms"): (0.942, 0.940), ("pipelined", "rms"): (0.929, 0.931),
       ("backprop", "none"): (0.956, 0.950), ("lockstep", "none"): (0.771, 0.701),
       ("sequential", "none"): (0.889, 0.9), ("pipelined", "none"): (0.004, 0.002)}
# Lockstep and sequential probe equally well: the bars must still both be seen.
PROBE = {"backprop": [0.955, 0.954, 0.955], "lockstep": [0.946, 0.94, 0.943],
         "sequential": [0.946, 0.94, 0.943], "pipelined": [0.941, 0.939, 0.935]}


def rows():
    out = []
    for (schedule, norm), accs in ACC.items():
        for seed, acc in enumerate(accs):
            out.append({"schedule": schedule, "normalization": norm, "seed": seed,
                        "test_accuracy": acc, "probe": PROBE[schedule] if norm == "rms"
                        else None, "random_probe": [0.94, 0.916, 0.912],
                        "input_probe": 0.895})
    return out


def figure():
    return compare_figure(rows(), 3, SCHEDULES, NORMS, classes=10, title="t")


def bars_of(ax, label):
    (container,) = [c for c in ax.containers
                    if isinstance(c, BarContainer) and c.get_label() == label]
    return list(container)


def test_accuracy_bars_are_seed_means_with_their_values_written_on_them():
    ax = figure().axes[0]
    texts = {round(t.get_position()[0], 6): t.get_text() for t in ax.texts}
    for norm in NORMS:
        bars = bars_of(ax, norm)
        want = [statistics.mean(100 * a for a in ACC[(s, norm)]) for s in SCHEDULES]
        assert [b.get_height() for b in bars] == pytest.approx(want, abs=1e-12)
        for bar, m in zip(bars, want):
            assert texts[round(bar.get_x() + bar.get_width() / 2, 6)] == f"{m:.1f}"


def test_spread_over_seeds_is_drawn_as_error_bars_and_dots():
    ax = figure().axes[0]
    dots = [l for l in ax.lines if l.get_marker() == "o"]
    ys = sorted(y for line in dots for y in line.get_ydata())
    assert ys == pytest.approx(sorted(100 * a for accs in ACC.values() for a in accs))
    caps = [c for c in ax.collections if c.get_segments()]  # one segment per bar's +-sd
    spans = sorted(seg[1][1] - seg[0][1] for c in caps for seg in c.get_segments())
    assert spans == pytest.approx(sorted(2 * statistics.stdev(100 * x for x in a)
                                         for a in ACC.values()))


def test_no_bar_hides_another_and_both_axes_start_at_zero_with_chance():
    fig = figure()
    for ax in fig.axes:
        spans = sorted((b.get_x(), b.get_x() + b.get_width()) for c in ax.containers
                       if isinstance(c, BarContainer) for b in c)
        assert len(spans) == (8 if ax is fig.axes[0] else 1 + 3 * 5)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # side by side
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 100
        (chance,) = [l for l in ax.lines if l.get_label() == "chance (1/10)"]
        assert list(chance.get_ydata()) == [10.0, 10.0]
        assert ax.get_legend() is None  # legends sit under the panels, off the bars
    assert len([lg for sub in fig.subfigs for lg in sub.legends]) == 2


def test_probe_panel_shows_every_trained_schedule_and_both_baselines():
    ax = figure().axes[1]
    assert [b.get_height() for b in bars_of(ax, "raw input")] == pytest.approx([89.5])
    assert [b.get_height() for b in bars_of(ax, "random frozen layers")] == \
        pytest.approx([94.0, 91.6, 91.2])
    for schedule, probe in PROBE.items():
        assert [b.get_height() for b in bars_of(ax, f"trained: {schedule}")] == \
            pytest.approx([100 * v for v in probe])


def test_write_png_writes_a_png_whose_title_names_the_setup(tmp_path):
    path = write_png(tmp_path / "compare.png", rows(), 3, SCHEDULES, NORMS, 10, RunConfig())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
