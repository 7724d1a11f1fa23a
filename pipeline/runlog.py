"""The files a run writes, and progress display.

JSONL is the source of truth: one JSON object per line, flushed as written, so a live run
can be followed (`ffpipe drift --watch`) and a killed run loses nothing already logged.
`summary.json` and `config.json` are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.config import RunConfig
from pipeline.dataset_info import resolve_augment


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)


def read_summary(run_dir: str | Path) -> dict:
    """The summary.json a finished run wrote."""
    return json.loads((Path(run_dir) / "summary.json").read_text())


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _clean(obj):
    """JSON has no NaN/inf: write them as null rather than produce invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


class JsonlWriter:
    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a" if append else "w", buffering=1)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_clean(record), default=_jsonable) + "\n")

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete record; a torn last line (run killed mid-write) is skipped."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def announce(text: str, stream=None) -> None:
    """One timestamped line on stderr (what a run is doing), as the progress lines are."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=stream or sys.stderr, flush=True)


def run_line(cfg: RunConfig) -> str:
    """The first line of a run, before anything starts: what starts, and where it goes."""
    t, p = cfg.train, cfg.pipeline
    if t.schedule == "pipelined":
        k = cfg.n_layers
        what = (f"starting {k + 2} processes (source, {k} stage{'s' * (k > 1)}, sink) over "
                f"{TRANSPORT_WORDS.get(p.transport, p.transport)}")
    else:
        what = f"training every layer in this process ({t.device})"
    again = f", resume={p.resume}" if p.resume != "false" else ""
    epochs = f"{t.epochs} epoch{'s' * (t.epochs != 1)}"
    # imports torch, which the rest of this module does not need
    from pipeline import precision
    aug = resolve_augment(cfg.data.augment, cfg.data.dataset)
    how = f"{precision.of_run(cfg)}" + (f", {aug}" if aug != "none" else "")
    return (f"{t.schedule}: {what}; layers {'-'.join(map(str, cfg.model.layers))} on "
            f"{cfg.data.dataset}, {epochs} ({how}), seed {t.seed}{again} -> {cfg.out}")


TRANSPORT_WORDS = {"local": "shared memory", "zmq": "zmq sockets",
                   "dist": "torch.distributed (torchrun)"}


class Progress:
    """What a run is doing, on stderr, named by its phase: "starting processes", "epoch
    3/60" (from the samples done, when `epochs` is given; "layer 1 epoch 3/60" when the
    total is `layers` passes of `epochs` one after the other, as in sequential), "final
    evaluation" (see `phase`), with the loss and test accuracy callers pass to `update`.

    On a terminal: a tqdm bar. Otherwise (a log file, CI): a timestamped line when a
    named phase starts, one `first` seconds after the first sample is counted (or at the
    first epoch boundary, if that comes sooner: a short run still shows its rate), then one
    every `every` seconds, each with the rate and the time left (ETA), and a last one at
    `close`.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "samples",
                 every: float = 10.0, stream=None, epochs: int = 0, layers: int = 1,
                 first: float = 2.0, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.desc, self.unit = total, desc, unit
        self.epochs, self.layers = epochs, layers
        self.every, self.first, self.clock = every, first, clock
        self.n, self.postfix, self.named = 0, {}, None
        self.next_line = float("inf")  # set by the first counted sample
        self.rate_from = None  # (time, n) of the first counted sample: ETA without start-up
        self.rated = False  # a line with the rate and ETA was written
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream,
                        dynamic_ncols=True) if self.tty else None

    def current_phase(self) -> str:
        if self.named is not None:
            return self.named
        if not (self.epochs and self.total):
            return ""
        per_layer = self.total / self.layers
        k = min(int(self.n // per_layer), self.layers - 1)
        e = min(int((self.n - k * per_layer) * self.epochs // per_layer) + 1, self.epochs)
        return (f"layer {k} " if self.layers > 1 else "") + f"epoch {e}/{self.epochs}"

    def phase(self, name: str | None) -> None:
        """Name what happens now ("final evaluation"); None: back to the epoch count."""
        if name == self.named:
            return
        self.named = name
        if self.bar is not None:
            self.bar.set_description(self._title(), refresh=True)
        else:
            self._line()

    def set_total(self, total: int, done: int = 0) -> None:
        """The total becomes known (a pipeline's sink learns it from the stream); `done`
        samples were trained on before (a resumed run)."""
        self.total, self.n = total, done
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.update(done)

    def update(self, n: int = 0, **postfix) -> None:
        old = self.current_phase()
        self.n += n
        if n and self.rate_from is None:
            self.rate_from = (self.clock(), self.n - n)
            self.next_line = self.rate_from[0] + min(self.first, self.every)
        self.postfix.update({k: v for k, v in postfix.items() if v is not None})
        if self.bar is not None:
            if self.current_phase() != old:
                self.bar.set_description(self._title(), refresh=False)
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(self._extras(), refresh=False)
            return
        first_boundary = not self.rated and n and self.current_phase() != old
        if first_boundary or self.clock() >= self.next_line:
            self._line()

    def _title(self) -> str:
        return f"{self.desc} {self.current_phase()}".rstrip()

    def _extras(self) -> str:
        return ", ".join(f"{k} {_fmt(k, v)}" for k, v in self.postfix.items())

    def _eta(self, now: float) -> str:
        if self.rate_from is None or not self.total or self.named is not None:
            return ""  # a named phase (start-up, final evaluation) trains on nothing
        t, n = self.rate_from
        rate = (self.n - n) / max(now - t, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else float("inf")
        eta = f"{int(left) // 3600}:{int(left) // 60 % 60:02d}:{int(left) % 60:02d}" \
            if math.isfinite(left) else "?"
        return f", {rate:.0f} {self.unit}/s, ETA {eta}"

    def _line(self) -> None:
        now = self.clock()
        if self.rate_from is not None:
            self.next_line = now + self.every
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extras, eta = self._extras(), self._eta(now)
        self.rated = self.rated or bool(eta)
        announce(f"{self._title()}: {done} {self.unit}{pct}{eta}"
                 + (f", {extras}" if extras else ""), self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        self.named = "done"
        self._line()


def _fmt(key: str, v) -> str:
    if key == "acc" and isinstance(v, float):
        return f"{100 * v:.1f}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
