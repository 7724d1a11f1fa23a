"""DriftMonitor: exact zero drift for a stage whose input never changes, drift that grows
monotonically with a known perturbation of the upstream layer, JSON-able records, the
Page-Hinkley alarm wired to the configured series, and the summary."""

import json

import pytest
import torch

from pipeline.config import DriftConfig
from pipeline.drift import DriftMonitor
from pipeline.drift.monitor import RECORD_KEYS

DRIFT_KEYS = ("cos_ref", "cos_prev", "mean_shift_ref", "mean_shift_prev", "cka_ref",
              "cka_prev", "mmd2_ref", "mmd2_prev")


def probe(seed=0, n=128, d=40):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def upstream_outputs(scales, seed=0):
    """Probe inputs to stage 1: relu(X (W + a*D)^T + b) for each perturbation a."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 30, generator=g)
    w, b = torch.randn(60, 30, generator=g) / 30 ** 0.5, 0.1 * torch.randn(60, generator=g)
    delta = torch.randn(60, 30, generator=g) / 30 ** 0.5
    return [torch.relu(x @ (w + a * delta).T + b) for a in scales]


def test_stage0_same_input_every_probe_gives_exactly_zero_drift():
    mon = DriftMonitor(0, DriftConfig())
    x = probe().relu()
    for step in range(0, 600, 100):
        rec = mon.observe(x.clone(), step)  # a fresh tensor with the same bytes each time
        assert rec["cos_ref"] == 1.0 and rec["cos_prev"] == 1.0
        assert rec["cka_ref"] == 1.0 and rec["cka_prev"] == 1.0
        for key in ("mean_shift_ref", "mean_shift_prev", "mmd2_ref", "mmd2_prev"):
            assert rec[key] == 0.0, key
        assert rec["alarm"] is False and rec["alarms"] == 0 and rec["ph_stat"] == 0.0


def test_first_probe_is_its_own_reference_so_first_record_shows_no_drift():
    rec = DriftMonitor(2, DriftConfig()).observe(probe(), step=7)
    assert (rec["kind"], rec["stage"], rec["step"], rec["probe"]) == ("drift", 2, 7, 0)
    assert rec["cos_ref"] == 1.0 and rec["mmd2_ref"] == 0.0 and rec["cka_ref"] == 1.0


def test_drift_grows_monotonically_with_upstream_weight_perturbation():
    scales = [0.0, 0.1, 0.2, 0.4, 0.8]
    mon = DriftMonitor(1, DriftConfig())
    recs = [mon.observe(x, step=i) for i, x in enumerate(upstream_outputs(scales))]
    cos = [r["cos_ref"] for r in recs]
    mmd = [r["mmd2_ref"] for r in recs]
    cka = [r["cka_ref"] for r in recs]
    assert cos[0] == 1.0 and mmd[0] == 0.0
    assert all(a > b for a, b in zip(cos, cos[1:])), cos   # strictly falling
    assert all(a < b for a, b in zip(mmd, mmd[1:])), mmd   # strictly rising
    assert all(a > b for a, b in zip(cka, cka[1:])), cka
    # From a=0.1 on the steps between probes double (0.1, 0.2, 0.4), so cos_prev falls too.
    prev = [r["cos_prev"] for r in recs[2:]]
    assert all(a > b for a, b in zip(prev, prev[1:])), prev


def test_monotonic_drift_holds_for_several_seeds():
    for seed in (1, 2, 3):
        mon = DriftMonitor(1, DriftConfig())
        recs = [mon.observe(x, i) for i, x in enumerate(upstream_outputs([0, .1, .2, .4, .8],
                                                                         seed))]
        cos, mmd = [r["cos_ref"] for r in recs], [r["mmd2_ref"] for r in recs]
        assert all(a > b for a, b in zip(cos, cos[1:])), (seed, cos)
        assert all(a < b for a, b in zip(mmd, mmd[1:])), (seed, mmd)


def test_record_has_every_documented_key_and_is_strict_json():
    mon = DriftMonitor(1, DriftConfig())
    mon.observe(probe(0), 0)
    rec = mon.observe(probe(1), 100, staleness=[3], source_step=400, time=1.5)
    assert set(RECORD_KEYS) <= set(rec)
    assert (rec["staleness"], rec["source_step"], rec["time"]) == ([3], 400, 1.5)
    back = json.loads(json.dumps(rec, allow_nan=False))  # raises on NaN/inf or tensors
    assert back == rec
    assert all(type(rec[k]) is float for k in DRIFT_KEYS + ("active_frac", "ph_stat"))
    assert type(rec["alarm"]) is bool and type(rec["alarms"]) is int


def test_extra_keys_may_not_overwrite_drift_fields():
    with pytest.raises(ValueError, match="clash"):
        DriftMonitor(0, DriftConfig()).observe(probe(), 0, cos_ref=0.5)


def test_monitor_keeps_its_own_copy_of_the_reference():
    mon = DriftMonitor(1, DriftConfig())
    x = probe()
    mon.observe(x, 0)
    x.add_(1.0)  # the stage keeps working on its tensor in place
    assert mon.observe(probe(), 1)["cos_ref"] == 1.0


def test_probe_shape_change_is_reported_as_a_bug():
    mon = DriftMonitor(1, DriftConfig())
    mon.observe(probe(n=16), 0)
    with pytest.raises(ValueError, match="differs from the reference"):
        mon.observe(probe(n=8), 1)


@pytest.mark.parametrize("series", ["cos_ref", "cka_ref", "mmd2_ref", "mean_shift_ref"])
def test_page_hinkley_alarms_on_a_sudden_upstream_change_whichever_series_is_watched(series):
    cfg = DriftConfig(ph_series=series, ph_delta=0.0, ph_threshold=0.02)
    mon = DriftMonitor(1, cfg)
    calm, jumped = upstream_outputs([0.0, 0.8])
    recs = [mon.observe(calm, i) for i in range(8)] + [mon.observe(jumped, 8)]
    assert [r["alarm"] for r in recs] == [False] * 8 + [True]
    assert recs[-1]["alarms"] == 1 and recs[-1]["ph_stat"] > 0.02


def test_falling_series_are_watched_downward_and_rising_series_upward():
    assert DriftMonitor(0, DriftConfig(ph_series="cos_ref")).detector.direction == "down"
    assert DriftMonitor(0, DriftConfig(ph_series="cos_prev")).detector.direction == "down"
    assert DriftMonitor(0, DriftConfig(ph_series="cka_ref")).detector.direction == "down"
    assert DriftMonitor(0, DriftConfig(ph_series="mmd2_ref")).detector.direction == "up"


def test_summary_reports_final_and_worst_drift_versus_reference():
    mon = DriftMonitor(3, DriftConfig())
    assert mon.summary()["probes"] == 0 and mon.summary()["cos_ref_final"] is None
    outs = upstream_outputs([0.0, 0.8, 0.2])  # drift out and partly back
    recs = [mon.observe(x, i) for i, x in enumerate(outs)]
    s = mon.summary()
    assert s["stage"] == 3 and s["probes"] == 3 and s["alarms"] == 0
    assert s["cos_ref_final"] == recs[-1]["cos_ref"]
    assert s["cos_ref_min"] == recs[1]["cos_ref"] < s["cos_ref_final"]
    assert s["mmd2_ref_max"] == recs[1]["mmd2_ref"] > s["mmd2_ref_final"]
    assert s["mean_shift_ref_max"] == max(r["mean_shift_ref"] for r in recs)
    assert s["mean_shift_ref_final"] == recs[-1]["mean_shift_ref"]
    assert s["cka_ref_final"] == recs[-1]["cka_ref"]
    json.dumps(s, allow_nan=False)
