"""Drift monitoring: how much each stage's input moves while upstream stages learn.

`DriftMonitor` (per stage, one record per probe) and `PageHinkley` (the alarm) are the
runtime side; `pipeline.drift.report` turns a run's logs into drift.png and report.md.
"""

from pipeline.drift.monitor import DriftMonitor
from pipeline.drift.page_hinkley import PageHinkley

__all__ = ["DriftMonitor", "PageHinkley"]
