"""Reports of a run's evaluations: a markdown table and PNG plots (``groupdiff report``)."""
from __future__ import annotations

from .build import build_report, collect_evaluations

__all__ = ["build_report", "collect_evaluations"]
