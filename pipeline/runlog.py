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


class Progress:
    """tqdm bar on a terminal; otherwise one plain line every `every` seconds."""

    def __init__(self, total: int, desc: str, unit: str = "samples", every: float = 10.0,
                 stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix = 0, {}
        self.t0 = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream,
                        dynamic_ncols=True) if self.tty else None

    def update(self, n: int = 0, **postfix) -> None:
        self.n += n
        self.postfix.update({k: v for k, v in postfix.items() if v is not None})
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def _line(self) -> None:
        rate = self.n / max(time.monotonic() - self.t0, 1e-9)
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} "
              f"({100 * self.n / max(self.total, 1):.0f}%) {rate:.0f} {self.unit}/s {extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
