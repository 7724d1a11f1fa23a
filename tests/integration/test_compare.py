"""`ffpipe compare` end to end on the synthetic data: every schedule x normalization,
including the pipelined one (which spawns a process per stage)."""

import csv
import json

import pytest

from pipeline.compare import compare_main, parse_args, run_compare, variant_overrides
from pipeline.errors import ConfigError

SCHEDULES = ["lockstep", "sequential", "backprop", "pipelined"]
NORMS = ["rms", "none"]
TRAIN_ARGS = ["--layers", "64,32,32", "--epochs", "2", "--dataset", "synthetic",
              "--data.train_size=400", "--probe-every", "5"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_writes_table_csv_plot_and_probes_for_every_run_then_resumes(tmp_path):
    out = tmp_path / "cmp"
    argv = ["--schedules", ",".join(SCHEDULES), "--normalizations", ",".join(NORMS),
            "--seeds", "0", "--out", str(out), "--probe-epochs", "5", *TRAIN_ARGS]
    assert compare_main(argv) == 0
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (out / name).stat().st_size > 0

    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert sorted((r["schedule"], r["normalization"]) for r in rows) == \
        sorted((s, n) for s in SCHEDULES for n in NORMS)
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert float(r["s0_mmd2_ref_max"]) == 0.0  # stage 0 reads raw data
        probed = r["normalization"] == NORMS[0]  # probes run on the first normalization
        for k in range(2):
            assert (r[f"probe_layer{k}"] != "") == probed
            if probed:
                assert 0.0 <= float(r[f"probe_layer{k}"]) <= 1.0
                assert 0.0 <= float(r[f"random_probe_layer{k}"]) <= 1.0
    sequential = [r for r in rows if r["schedule"] == "sequential"]
    assert all(float(r["s1_mmd2_ref_max"]) == 0.0 for r in sequential)  # upstream frozen

    md = (out / "compare.md").read_text()
    run_lines = [l for l in md.splitlines() if l.startswith("| ") and " | s0 " in l]
    assert sorted(tuple(c.strip() for c in l.split("|")[1:3]) for l in run_lines) == \
        sorted((s, n) for s in SCHEDULES for n in NORMS)
    probe_lines = {l.split("|")[1].strip(): l for l in md.splitlines()
                   if l.startswith("| raw input") or l.startswith("| random frozen")
                   or l.startswith("| trained: ")}
    assert {"raw input", "random frozen"} | {f"trained: {s}" for s in SCHEDULES} \
        == set(probe_lines)
    for name in ["random frozen"] + [f"trained: {s}" for s in SCHEDULES]:
        cells = [c.strip() for c in probe_lines[name].split("|")[2:-1]]
        assert cells[0] == "—" and all(0 <= float(c) <= 100 for c in cells[1:]), cells

    # Same config again: the finished run is reused, not retrained.
    args, base = parse_args(argv)
    summary = out / "lockstep-rms-s0" / "summary.json"
    written = summary.stat().st_mtime_ns
    again = run_compare(base, ["lockstep"], ["rms"], [0], out, probe_epochs=1)
    assert again[0]["reused"] is True and summary.stat().st_mtime_ns == written


def test_schedule_variants_apply_their_overrides_to_their_own_runs_only(tmp_path):
    out = tmp_path / "variants"
    argv = ["--schedules", "lockstep,lockstep+lr=0.002", "--normalizations", "rms",
            "--out", str(out), "--probe-epochs", "0", *TRAIN_ARGS]
    assert compare_main(argv) == 0
    plain = json.loads((out / "lockstep-rms-s0" / "config.json").read_text())
    variant = json.loads((out / "lockstep+lr0.002-rms-s0" / "config.json").read_text())
    assert variant["train"]["lr"] == 0.002 != plain["train"]["lr"]
    rows = {r["schedule"] for r in csv.DictReader(open(out / "compare.csv"))}
    assert rows == {"lockstep", "lockstep+lr=0.002"}


def test_schedule_variants_map_short_flags_and_dotted_keys():
    assert variant_overrides("pipelined+replay=512+max-staleness=2") == (
        "pipelined", [("pipeline.replay", "512"), ("pipeline.max_staleness", "2")])
    assert variant_overrides("lockstep+train.lr=0.01")[1] == [("train.lr", "0.01")]


@pytest.mark.parametrize("item, match", [
    ("pipelined+replay", "write each variant as \\+key=value"),
    ("pipelined+seed=3", "compare sets per run; use --seeds"),
    ("fast+replay=2", "'fast' not allowed"),
    ("pipelined+nosuch=1", "unknown option --nosuch"),
])
def test_bad_schedule_variant_is_a_one_line_config_error(tmp_path, item, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(["--schedules", item, "--out", str(tmp_path)])
