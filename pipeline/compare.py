"""`ffpipe compare`: every schedule x normalization x seed on the same data, architecture
and sample budget, side by side in one table, plus the linear-probe baselines.

A `--schedules` item may carry its own train overrides: `pipelined+replay=512` or
`pipelined+max-staleness=2` put a drift mitigation beside the plain pipeline.

Each run is an ordinary `train(cfg)` into OUT/{item}-{norm}-s{seed}/, one after the
other in this process (pipelined runs spawn their own processes). A run folder whose
summary.json was written under the same config is reused, so an interrupted compare
picks up where it stopped.

The probe baselines (first normalization of the list only): a linear softmax probe on
each layer's normalized activities of every trained run, on random frozen layers of the
same shapes, and on the raw pixels. If trained layers probe no better than random ones,
the "ensemble of linear estimators on preprocessed inputs" objection stands.

Writes OUT/compare.md (run table + probe table), OUT/compare.csv (one row per run, every
number) and OUT/compare.png (accuracy bars; probe accuracy per layer; both with chance and seeds).
"""

from __future__ import annotations

import copy
import csv
import json
import statistics
from pathlib import Path

from tqdm import tqdm

from pipeline.compare_plot import group_rows, write_png
from pipeline.config import SCHEDULES, RunConfig, load_config, set_value, to_dict, validate
from pipeline.datasets import load_dataset
from pipeline.command_line import command_parser
from pipeline.errors import ConfigError
from pipeline.linear_probes import probe_input, probe_layers, random_layers
from pipeline.overrides import parse_overrides
from pipeline.processes import train
from pipeline.processes.run_dir import recorded_config
from pipeline.runlog import Progress, read_jsonl
from pipeline.runtime.checkpoint import load_layers

NORMALIZATIONS = ("rms", "length", "none")
# Keys compare sets itself per run; passing them as train overrides is a mistake.
OWN_KEYS = {"train.schedule": "--schedules", "model.normalization": "--normalizations",
            "train.seed": "--seeds", "out": "--out"}


def parse_args(argv: list[str]):
    p = command_parser(  # no abbreviations: `--seed` must not become `--seeds`
        "ffpipe compare", "schedules x normalizations side by side, plus linear-probe "
        "baselines", epilog="Any other option is a `ffpipe train` override applied to every "
        "run.\n\nexample:\n  ffpipe compare --epochs 5 --dataset synthetic --seeds 0,1")
    p.add_argument("--config", help="TOML config for every run (default: none)")
    p.add_argument("--schedules", default="backprop,lockstep,sequential,pipelined",
                   help="comma-separated; an item may add +key=value train overrides, "
                        "e.g. pipelined+replay=512,pipelined+max-staleness=2")
    p.add_argument("--normalizations", default="rms,length,none",
                   help="comma-separated layer-input normalizations to compare")
    p.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    p.add_argument("--out", default="runs/compare", help="folder of the runs and the tables")
    p.add_argument("--probe-epochs", type=int, default=20,
                   help="epochs of each linear probe (0 = no probes)")
    args, rest = p.parse_known_args(argv)
    path, overrides = parse_overrides(rest)
    for key, _ in overrides:
        if key in OWN_KEYS:
            raise ConfigError(f"--{key}: compare sets it per run; use {OWN_KEYS[key]}")
    args.schedules = schedule_variants(args.schedules)
    args.normalizations = _names(args.normalizations, NORMALIZATIONS, "--normalizations")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: give integers like 0,1,2, got {args.seeds!r}") from None
    if not args.seeds or min(args.seeds) < 0:
        raise ConfigError("--seeds: give at least one seed >= 0")
    return args, load_config(args.config or path, overrides)


def _names(text: str, allowed: tuple, flag: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        raise ConfigError(f"{flag}: {', '.join(bad) or 'empty'} not allowed; "
                          f"choose from {', '.join(allowed)}")
    return names


def schedule_variants(text: str) -> list[str]:
    """`--schedules` items: a schedule, optionally with `+key=value` train overrides that
    apply to that item alone, e.g. `pipelined,pipelined+replay=512,pipelined+max-staleness=2`
    (how the drift mitigations are weighed against the plain pipeline in one table)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"--schedules: empty; choose from {', '.join(SCHEDULES)}")
    for item in items:
        variant_overrides(item)  # fail on any bad item before a run starts
    if len(set(items)) != len(items):
        raise ConfigError(f"--schedules: {text!r} names an item twice")
    return items


def variant_overrides(item: str) -> tuple[str, list[tuple[str, str]]]:
    """'pipelined+replay=512' -> ('pipelined', [('pipeline.replay', '512')])."""
    schedule, *mods = item.split("+")
    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedules: {schedule!r} not allowed; choose from "
                          f"{', '.join(SCHEDULES)} (variants: pipelined+replay=512)")
    bad = [m for m in mods if not m.partition("=")[1] or not m.partition("=")[2]]
    if bad:
        raise ConfigError(f"--schedules: {item!r}: write each variant as +key=value, "
                          f"e.g. pipelined+replay=512")
    _, overrides = parse_overrides([f"--{m}" for m in mods])
    for key, value in overrides:
        set_value(RunConfig(), key, value)  # unknown key or wrong type: fail now
        if key in OWN_KEYS:
            raise ConfigError(f"--schedules: {item!r} sets {key}, which compare sets per "
                              f"run; use {OWN_KEYS[key]}")
    return schedule, overrides


def run_config(base: RunConfig, out: Path, item: str, norm: str, seed: int) -> RunConfig:
    schedule, overrides = variant_overrides(item)
    cfg = copy.deepcopy(base)
    for key, value in overrides:
        set_value(cfg, key, value)
    cfg.out = str(out / f"{item.replace('=', '')}-{norm}-s{seed}")
    cfg.train.schedule, cfg.model.normalization, cfg.train.seed = schedule, norm, seed
    cfg.pipeline.overwrite = True  # compare's own folders: an unfinished run is redone
    return validate(cfg)


def finished_summary(cfg: RunConfig) -> dict | None:
    """The summary of a finished run in cfg.out made with exactly this config, else None."""
    out = Path(cfg.out)
    if recorded_config(out / "config.json") != json.loads(json.dumps(to_dict(cfg))):
        return None
    try:
        return json.loads((out / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def drift_stats(run_dir: Path, summary: dict, n_stages: int) -> list[dict]:
    """Per stage: mean (over probes, from stage{k}.jsonl) and max (summary) of MMD² and of
    1 - cosine vs the reference probe, plus worst mean shift, final CKA and alarms."""
    out = []
    for k in range(n_stages):
        fin = next((d for d in summary.get("drift", []) if d.get("stage") == k), {})
        path = run_dir / f"stage{k}.jsonl"
        recs = [r for r in (read_jsonl(path) if path.exists() else [])
                if r.get("kind") == "drift" and r.get("mmd2_ref") is not None]
        cos_min = fin.get("cos_ref_min")
        out.append({
            "mmd2_ref_mean": _mean([r["mmd2_ref"] for r in recs]),
            "mmd2_ref_max": fin.get("mmd2_ref_max"),
            "cos_dist_ref_mean": _mean([1 - r["cos_ref"] for r in recs if r.get("cos_ref")
                                        is not None]),
            "cos_dist_ref_max": None if cos_min is None else 1 - cos_min,
            "mean_shift_ref_max": fin.get("mean_shift_ref_max"),
            "cka_ref_final": fin.get("cka_ref_final"),
            "alarms": fin.get("alarms"),
        })
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def run_compare(base: RunConfig, schedules: list[str], normalizations: list[str],
                seeds: list[int], out: str | Path, probe_epochs: int = 20) -> list[dict]:
    """Train (or reuse) every run, probe the first normalization's runs, write the report.
    Returns one row per run (the rows of compare.csv, nested)."""
    out = Path(out)
    plan = [(s, n, seed) for n in normalizations for s in schedules for seed in seeds]
    cfgs = [run_config(base, out, *p) for p in plan]  # validate them all before any runs
    K, rows, ds = base.n_layers, [], None
    random_cache: dict[int, tuple[list[float], float]] = {}
    progress = Progress(len(plan), "compare", unit="runs", every=float("inf"))
    for i, ((schedule, norm, seed), cfg) in enumerate(zip(plan, cfgs), 1):
        summary = finished_summary(cfg)
        reused = summary is not None
        if not reused:
            summary = train(cfg)
        row = {"schedule": schedule, "normalization": norm, "seed": seed,
               "test_accuracy": summary["test_accuracy"],
               "head_accuracy": summary.get("head_accuracy"),
               "train_samples": summary.get("train_samples"),
               "wall_seconds": summary.get("wall_seconds"),
               "samples_per_second": summary.get("samples_per_second"),
               "reused": reused, "run_dir": cfg.out,
               "drift": drift_stats(Path(cfg.out), summary, K),
               "probe": None, "random_probe": None, "input_probe": None}
        if probe_epochs and norm == normalizations[0]:
            ds = ds or load_dataset(base.data)
            row["probe"] = probe_layers(load_layers(cfg.out, cfg), ds, cfg, probe_epochs, seed)
            if seed not in random_cache:
                random_cache[seed] = (probe_layers(random_layers(cfg, seed), ds, cfg,
                                                   probe_epochs, seed),
                                      probe_input(ds, probe_epochs, seed))
            row["random_probe"], row["input_probe"] = random_cache[seed]
        rows.append(row)
        tqdm.write(f"[{i}/{len(plan)}] {Path(cfg.out).name}: test accuracy "
                   f"{100 * row['test_accuracy']:.2f}% ({row['wall_seconds'] or 0:.1f}s"
                   f"{', reused: same config already finished' if reused else ''})")
        progress.update(1, acc=row["test_accuracy"])
    progress.close()
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", rows, K)
    write_md(out / "compare.md", rows, K, base)
    classes = (ds or load_dataset(base.data)).num_classes  # for the chance line
    write_png(out / "compare.png", rows, K, schedules, normalizations, classes, base)
    return rows


# ---- outputs ---------------------------------------------------------------------------

def csv_row(row: dict, n_stages: int) -> dict:
    flat = {k: v for k, v in row.items() if k not in ("drift", "probe", "random_probe")}
    for k, d in enumerate(row["drift"]):
        flat.update({f"s{k}_{name}": v for name, v in d.items()})
    for name in ("probe", "random_probe"):
        for k in range(n_stages):
            flat[f"{name}_layer{k}"] = row[name][k] if row[name] else None
    return flat


def write_csv(path: Path, rows: list[dict], n_stages: int) -> None:
    flat = [csv_row(r, n_stages) for r in rows]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows([{k: "" if v is None else v for k, v in r.items()} for r in flat])


def _num(v) -> str:
    if v is None:
        return "—"
    return "0" if abs(v) < 1e-9 else f"{v:.2g}"


def _pm(xs: list, pct: bool = True) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    s = 100 if pct else 1
    m = f"{s * statistics.mean(xs):.1f}" if pct else f"{statistics.mean(xs):.0f}"
    return m + (f" ± {s * statistics.stdev(xs):.1f}" if len(xs) > 1 and pct else "")


def _drift_cell(runs: list[dict], n_stages: int, mean_key: str, max_key: str) -> str:
    parts = []
    for k in range(n_stages):
        mean = _mean([r["drift"][k][mean_key] for r in runs])
        worst = _mean([r["drift"][k][max_key] for r in runs])
        parts.append(f"s{k} {_num(mean)}/{_num(worst)}")
    return " ".join(parts)


def write_md(path: Path, rows: list[dict], n_stages: int, base: RunConfig) -> None:
    lines = [f"# ffpipe compare: {base.data.dataset}, layers "
             f"{','.join(map(str, base.model.layers))}, {base.train.epochs} epochs", "",
             "Drift is each stage's input vs its first probe, written `s{k} mean/max` over "
             "the run's probes (s0 reads raw data: always 0).", "",
             "| schedule | normalization | seeds | test acc % | wall s | samples/s "
             "| MMD² vs ref, mean/max per stage | 1−cos vs ref, mean/max per stage |",
             "|---|---|---|---|---|---|---|---|"]
    for (schedule, norm), runs in group_rows(rows).items():
        lines.append(
            f"| {schedule} | {norm} | {','.join(str(r['seed']) for r in runs)} "
            f"| {_pm([r['test_accuracy'] for r in runs])} "
            f"| {_mean([r['wall_seconds'] for r in runs]):.1f} "
            f"| {_pm([r['samples_per_second'] for r in runs], pct=False)} "
            f"| {_drift_cell(runs, n_stages, 'mmd2_ref_mean', 'mmd2_ref_max')} "
            f"| {_drift_cell(runs, n_stages, 'cos_dist_ref_mean', 'cos_dist_ref_max')} |")
    probed = [r for r in rows if r["probe"]]
    if probed:
        norm = probed[0]["normalization"]
        cols = ["input"] + [f"layer {k}" for k in range(n_stages)]
        lines += ["", f"## Linear probe test accuracy % per layer ({norm}, neutral label)", "",
                  "Softmax probe on each layer's normalized activities: trained layers vs "
                  "random frozen layers of the same shapes vs the raw input.", "",
                  "| features | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        by_seed = {r["seed"]: r for r in probed}.values()  # one random/input set per seed
        lines.append("| raw input | " + _pm([r["input_probe"] for r in by_seed])
                     + " | —" * n_stages + " |")
        lines.append("| random frozen | — | " + " | ".join(
            _pm([r["random_probe"][k] for r in by_seed]) for k in range(n_stages)) + " |")
        for (schedule, _), runs in group_rows(probed).items():
            lines.append(f"| trained: {schedule} | — | " + " | ".join(
                _pm([r["probe"][k] for r in runs]) for k in range(n_stages)) + " |")
    path.write_text("\n".join(lines) + "\n")


def compare_main(argv: list[str]) -> int:
    args, base = parse_args(argv)
    run_compare(base, args.schedules, args.normalizations, args.seeds, args.out,
                args.probe_epochs)
    print(f"wrote {args.out}/compare.md, compare.csv and compare.png")
    return 0
