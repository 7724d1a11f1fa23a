"""A run folder read back for reports and figures: its records (stage{k}.jsonl, sink.jsonl),
config.json and summary.json, and what a figure needs to know about the run: who it is
(schedule, dataset, layers, seed; for titles and legends) and its clock (a source step as
epochs or training samples, and where the learning rate starts to decay).

Every record carries the source step it belongs to: the pipelined stages' `source_step`,
the sink's and the single-process schedules' `step` (there the two are the same). Source
steps of runs with different batch sizes do not line up; epochs and samples do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.runlog import read_jsonl

# x-axis units a user can ask for; "steps" (source steps) is the fallback for a run
# folder without config.json, whose batch size is unknown.
X_UNITS = ("epochs", "samples")


def read_json(path: Path) -> dict:
    """A JSON object file, or {} where it is missing, torn or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def record_step(rec: dict) -> int | None:
    """The source step a record belongs to (stage records: source_step; sink: step)."""
    return rec.get("source_step", rec.get("step"))


@dataclass
class RunFacts:
    run_dir: Path
    schedule: str | None = None
    dataset: str | None = None
    layers: list[int] | None = None
    seed: int | None = None
    normalization: str | None = None
    batch_size: int | None = None
    epochs: int | None = None
    lr_schedule: str | None = None
    total_steps: int | None = None  # source steps of the whole run (the final evaluation's)

    @property
    def passes(self) -> int:
        """Times the run goes through its epochs: once per layer for sequential (layer k
        trains all epochs on a frozen layer k-1), else once."""
        if self.schedule == "sequential" and self.layers:
            return len(self.layers) - 1
        return 1

    @property
    def steps_per_epoch(self) -> float | None:
        if not (self.total_steps and self.epochs):
            return None
        return self.total_steps / (self.epochs * self.passes)

    def knows(self, unit: str) -> bool:
        if unit == "epochs":
            return self.steps_per_epoch is not None
        return self.batch_size is not None if unit == "samples" else True

    def x(self, step: float, unit: str) -> float:
        """A source step in `unit`: epochs (sequential: counted over all its layers, one
        after the other) or training images drawn (step x batch size)."""
        if unit == "samples":
            return step * self.batch_size
        return step / self.steps_per_epoch if unit == "epochs" else step

    def decay_steps(self) -> list[float]:
        """Source steps where the linear learning-rate decay starts: half way through
        training (`layer_trainer.lr_gain`), once per layer for sequential."""
        if self.lr_schedule != "linear-decay" or not self.total_steps:
            return []
        per_pass = self.total_steps / self.passes
        return [(k + 0.5) * per_pass for k in range(self.passes)]

    def describe(self) -> str:
        """`pipelined, mnist-5k, layers 784-1000-1000, seed 0` (what is known of it)."""
        parts = [self.schedule, self.dataset,
                 "layers " + "-".join(map(str, self.layers)) if self.layers else None,
                 None if self.seed is None else f"seed {self.seed}"]
        return ", ".join(p for p in parts if p) or str(self.run_dir)

    def label(self, extra: list[str] = ()) -> str:
        """A legend entry naming the run: schedule, seed, `extra` and out folder."""
        who = " ".join(p for p in (self.schedule, None if self.seed is None
                                   else f"seed {self.seed}") if p)
        who = ", ".join([who, *extra] if who else extra)
        return f"{who} ({self.run_dir})" if who else str(self.run_dir)


def run_facts(run_dir: Path, cfg: dict, summary: dict, evals: list[dict]) -> RunFacts:
    """Facts from config.json (or summary.json where there is none) and the final
    evaluation among the sink's records, which is taken at the run's last source step."""
    train, model, data = (cfg.get(s) or {} for s in ("train", "model", "data"))
    final = [r["step"] for r in evals if r.get("final") and isinstance(r.get("step"), int)]
    return RunFacts(
        run_dir=run_dir,
        schedule=train.get("schedule", summary.get("schedule")),
        dataset=data.get("dataset", summary.get("dataset")),
        layers=model.get("layers", summary.get("layers")),
        seed=train.get("seed", summary.get("seed")),
        normalization=model.get("normalization", summary.get("normalization")),
        batch_size=train.get("batch_size", summary.get("batch_size")),
        epochs=train.get("epochs", summary.get("epochs")),
        lr_schedule=train.get("lr_schedule"),
        total_steps=final[-1] if final else None)


_STAGE_FILE = re.compile(r"stage(\d+)\.jsonl")


def stage_files(run_dir: Path) -> dict[int, Path]:
    found = {}
    for p in run_dir.iterdir():
        m = _STAGE_FILE.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


@dataclass
class RunLogs:
    """Everything a run folder holds that the reports read, records split by kind."""
    run_dir: Path
    facts: RunFacts
    drift: dict[int, list[dict]] = field(default_factory=dict)   # stage -> drift records
    train: dict[int, list[dict]] = field(default_factory=dict)   # stage -> train records
    start_step: dict[int, int] = field(default_factory=dict)     # stage -> version at start
    evals: list[dict] = field(default_factory=list)              # sink: accuracy records
    config: dict = field(default_factory=dict)                   # config.json ({} if none)
    summary: dict | None = None                                   # None while running


def read_run(run_dir, command: str = "ffpipe drift") -> RunLogs:
    """A run folder's records; a missing folder or one without stage logs is a user error
    (`command` is what the user ran, for the message)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found; give the --out folder of a run, "
                        f"e.g. {command} runs/NAME")
    files = stage_files(run_dir)
    if not files:
        raise UserError(f"no stage logs (stage0.jsonl, ...) in {run_dir}; train into it "
                        f"first (ffpipe train --out {run_dir}) or check the path")
    drift, train, start = {}, {}, {}
    for k, path in files.items():
        recs = read_jsonl(path)
        drift[k] = [r for r in recs if r.get("kind") == "drift"]
        train[k] = [r for r in recs if r.get("kind") == "train"]
        start[k] = next((r.get("version", 0) for r in recs if r.get("kind") == "start"), 0)
    sink = run_dir / "sink.jsonl"
    evals = [r for r in read_jsonl(sink) if r.get("kind") == "eval"] if sink.exists() else []
    cfg, summary = read_json(run_dir / "config.json"), read_json(run_dir / "summary.json")
    return RunLogs(run_dir, run_facts(run_dir, cfg, summary, evals), drift, train, start,
                   evals, cfg, summary or None)


def x_label(unit: str, facts: RunFacts | None = None) -> str:
    """The x-axis label; with one run's facts, an epoch's length too."""
    if unit == "epochs" and facts is not None and facts.steps_per_epoch:
        return (f"epoch ({facts.steps_per_epoch:g} steps of {facts.batch_size} images; "
                f"{facts.epochs} epochs" + (" per layer, layer after layer)"
                                            if facts.passes > 1 else ")"))
    return {"epochs": "epoch", "samples": "training images drawn (steps x batch size)",
            "steps": "source step"}[unit]


def common_unit(runs: list[RunFacts], wanted: str) -> tuple[str, str | None]:
    """The unit every run can be drawn in: `wanted`, else samples (a run without a final
    evaluation yet, live or killed, has no known epoch length), else source steps (no
    config.json). Returns (unit, a warning for the user or None)."""
    why = None  # why the unit before this one could not be used
    for unit in (wanted, "samples", "steps"):
        missing = [str(r.run_dir) for r in runs if not r.knows(unit)]
        if not missing:
            return unit, why
        why = (f"x in {'samples' if unit == 'epochs' else 'source steps'}, not {wanted}: "
               f"{', '.join(missing)} has "
               + ("no final evaluation in sink.jsonl, so its epoch length is unknown"
                  if unit == "epochs" else "no config.json, so its batch size is unknown"))
    raise AssertionError("steps are always known")
