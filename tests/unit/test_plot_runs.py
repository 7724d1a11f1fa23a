"""`ffpipe plot`: from runs recorded by the real trainer (lockstep, in this process, on the
synthetic data), the figure's lines carry exactly the numbers of sink.jsonl and
stage{k}.jsonl, on an x axis that lines up runs with other batch sizes."""

import json
import math

import pytest

from conftest import SYNTH, read_jsonl
from pipeline import train
from pipeline.errors import UserError
from pipeline.figures import DECAY_LABEL
from pipeline.overrides import config_from_argv
from pipeline.plot_runs import parser, plot_main, run_names, training_figure
from pipeline.run_folder import read_run

pytestmark = pytest.mark.timeout(180)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_IMAGES = 1600  # synthetic's training split


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two recorded lockstep runs, batch 25 (with the softmax head) and batch 50."""
    base = tmp_path_factory.mktemp("plot")
    out = {}
    for name, extra in (("b25", ["--head"]), ("b50", ["--batch-size", "50"])):
        out[name] = base / name
        train(config_from_argv([*SYNTH, "--schedule", "lockstep", "--epochs", "2",
                                "--eval-every", "16", "--probe-every", "0",
                                "--train.threads=1", "--out", str(out[name]), *extra]))
    return out


def panel(fig, title_start):
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith(title_start)]
    return ax


def run_line(ax, runs, i=0):
    """The lines of run i of the figure's runs (its legend entry names it)."""
    return [line for line in ax.lines if line.get_label() == run_names(runs)[i]]


def test_plot_writes_training_png_next_to_a_single_run(runs, capsys):
    assert plot_main([str(runs["b25"])]) == 0
    png = runs["b25"] / "training.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert f"wrote {png}" in capsys.readouterr().out


def test_figure_lines_carry_the_jsonl_numbers_against_epochs(runs):
    run = runs["b25"]
    logs = read_run(run)
    fig, unit, note = training_figure([logs])
    assert (unit, note) == ("epochs", None)
    steps_per_epoch = math.ceil(TRAIN_IMAGES / 25)
    evals = [r for r in read_jsonl(run / "sink.jsonl") if r["kind"] == "eval"]
    goodness, head = run_line(panel(fig, "Test accuracy"), [logs])
    assert list(goodness.get_ydata()) == [100 * r["test_accuracy"] for r in evals]
    assert list(head.get_ydata()) == [100 * r["head_accuracy"] for r in evals]
    assert list(goodness.get_xdata()) == [r["step"] / steps_per_epoch for r in evals]
    assert goodness.get_xdata()[-1] == 2.0  # the final evaluation ends epoch 2
    for k in range(3):
        recs = [r for r in read_jsonl(run / f"stage{k}.jsonl") if r["kind"] == "train"]
        (loss,) = run_line(panel(fig, f"Stage {k}: training loss"), [logs])
        assert list(loss.get_ydata()) == [r["loss"] for r in recs]
        assert list(loss.get_xdata()) == [r["source_step"] / steps_per_epoch for r in recs]
    # Linear decay starts half way: epoch 1 of 2, marked on every panel.
    for ax in fig.axes:
        if ax.lines:
            (decay,) = [l for l in ax.lines if l.get_label() == DECAY_LABEL]
            assert list(decay.get_xdata()) == [1.0, 1.0]


def test_runs_with_other_batch_sizes_line_up_in_samples_and_epochs(runs):
    both = [read_run(runs["b25"]), read_run(runs["b50"])]
    for unit, end in (("samples", 2 * TRAIN_IMAGES), ("epochs", 2.0)):
        fig, used, _ = training_figure(both, unit)
        assert used == unit
        acc = panel(fig, "Test accuracy")
        for i, logs in enumerate(both):
            line = run_line(acc, both, i)[0]
            assert line.get_xdata()[-1] == end, (unit, logs.run_dir)
    # The legend names each run, and the setting in which they differ.
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    for batch, folder in ((25, "b25"), (50, "b50")):
        assert any("lockstep seed 0" in t and f"batch {batch}" in t and folder in t
                   for t in legend), legend
    assert "synthetic" in fig._suptitle.get_text()  # what they share is in the title


def test_a_run_without_its_final_evaluation_is_drawn_in_samples_with_a_warning(runs,
                                                                                tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    for name in ("config.json", "stage0.jsonl", "stage1.jsonl", "stage2.jsonl"):
        (live / name).write_bytes((runs["b25"] / name).read_bytes())
    evals = [r for r in read_jsonl(runs["b25"] / "sink.jsonl") if not r.get("final")]
    (live / "sink.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    both = [read_run(live), read_run(runs["b50"])]
    fig, unit, note = training_figure(both)
    assert unit == "samples" and str(live) in note and "final evaluation" in note
    line = run_line(panel(fig, "Test accuracy"), both)[0]
    assert list(line.get_xdata()) == [r["step"] * 25 for r in evals]


def test_several_runs_need_an_out_file_and_out_must_be_a_png(runs, tmp_path):
    with pytest.raises(UserError, match="--out"):
        plot_main([str(runs["b25"]), str(runs["b50"])])
    with pytest.raises(UserError, match="PNG"):
        plot_main([str(runs["b25"]), "--out", str(tmp_path / "a.pdf")])
    with pytest.raises(UserError, match="not found"):
        plot_main([str(tmp_path / "nope")])
    out = tmp_path / "sub" / "both.png"
    assert plot_main([str(runs["b25"]), str(runs["b50"]), "--out", str(out),
                      "--x", "samples"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_help_is_on_stdout_and_every_option_has_help_and_a_default(capsys):
    with pytest.raises(SystemExit) as exc:
        plot_main(["--help"])
    assert exc.value.code == 0
    assert "usage: ffpipe plot" in capsys.readouterr().out
    for action in parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.default is not None, action.dest
