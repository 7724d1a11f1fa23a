"""Per-stage drift monitor: one record per probe of the stage's input.

A stage calls `observe(x, step)` with its current INPUT for the fixed probe set (the same
training images every time). The first call becomes the reference X_0; every call is
compared with X_0 ("_ref") and with the previous probe ("_prev"). A Page-Hinkley test
on one chosen series (cfg.ph_series) turns a sustained change into an alarm.
"""

from __future__ import annotations

import torch

from pipeline.config import DriftConfig
from pipeline.drift import metrics
from pipeline.drift.page_hinkley import PageHinkley

# Series where drift makes the value FALL (similarities); all others rise with drift.
FALLING_SERIES = ("cos_ref", "cos_prev", "cka_ref", "cka_prev")

RECORD_KEYS = ("kind", "stage", "step", "probe", "cos_ref", "cos_prev", "mean_shift_ref",
               "mean_shift_prev", "cka_ref", "cka_prev", "mmd2_ref", "mmd2_prev",
               "active_frac", "alarm", "alarms", "ph_stat")


class DriftMonitor:
    def __init__(self, stage: int, cfg: DriftConfig):
        self.stage = int(stage)
        self.cfg = cfg
        direction = "down" if cfg.ph_series in FALLING_SERIES else "up"
        self.detector = PageHinkley(cfg.ph_delta, cfg.ph_threshold, direction)
        self.ref: torch.Tensor | None = None
        self.prev: torch.Tensor | None = None
        self.bandwidth: float | None = None
        self.probes = 0
        self.last: dict | None = None
        # Extremes for summary(): the worst the stage saw, not only where it ended.
        self._min_cos_ref = self._max_mmd2_ref = self._max_shift_ref = None

    def observe(self, x: torch.Tensor, step: int, **extra) -> dict:
        """Record drift of `x` (this stage's input for the probe set) at `step`.

        `extra` (staleness, source_step, time, ...) is copied into the record untouched.
        """
        clash = set(extra) & set(RECORD_KEYS)
        if clash:
            raise ValueError(f"extra keys clash with drift record keys: {sorted(clash)}")
        # A detached float64 copy on the CPU: the caller keeps training on its tensor.
        x = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1).clone()
        if self.ref is None:
            self.ref, self.prev = x, x
            self.bandwidth = metrics.rbf_bandwidth(x)
        elif x.shape != self.ref.shape:
            raise ValueError(f"stage {self.stage}: probe shape {tuple(x.shape)} differs "
                             f"from the reference {tuple(self.ref.shape)}")

        ref, prev = self.ref, self.prev
        rec = {
            "kind": "drift", "stage": self.stage, "step": int(step), "probe": self.probes,
            "cos_ref": metrics.cosine_mean(x, ref),
            "cos_prev": metrics.cosine_mean(x, prev),
            "mean_shift_ref": metrics.mean_shift(x, ref),
            "mean_shift_prev": metrics.mean_shift(x, prev),
            "cka_ref": metrics.linear_cka(x, ref),
            "cka_prev": metrics.linear_cka(x, prev),
            "mmd2_ref": metrics.mmd2_rbf(x, ref, self.bandwidth),
            "mmd2_prev": metrics.mmd2_rbf(x, prev, self.bandwidth),
            "active_frac": metrics.active_fraction(x),
        }
        alarm = self.detector.update(rec[self.cfg.ph_series])
        rec.update(alarm=alarm, alarms=self.detector.alarms, ph_stat=float(self.detector.stat))
        rec.update(extra)

        self.prev = x
        self.probes += 1
        self.last = rec
        self._min_cos_ref = _pick(min, self._min_cos_ref, rec["cos_ref"])
        self._max_mmd2_ref = _pick(max, self._max_mmd2_ref, rec["mmd2_ref"])
        self._max_shift_ref = _pick(max, self._max_shift_ref, rec["mean_shift_ref"])
        return rec

    def summary(self) -> dict:
        """Final and worst drift versus the reference (None before the first probe)."""
        last = self.last or {}
        return {
            "stage": self.stage,
            "probes": self.probes,
            "alarms": self.detector.alarms,
            "cos_ref_final": last.get("cos_ref"),
            "cos_ref_min": self._min_cos_ref,
            "mmd2_ref_final": last.get("mmd2_ref"),
            "mmd2_ref_max": self._max_mmd2_ref,
            "mean_shift_ref_final": last.get("mean_shift_ref"),
            "mean_shift_ref_max": self._max_shift_ref,
            "cka_ref_final": last.get("cka_ref"),
        }


def _pick(fn, old, new):
    return new if old is None else fn(old, new)
