"""Guided GroupDiff sampling (DESIGN 1.4): CFG / guidance interval / GroupDiff-f and -l, seeded generation."""
from __future__ import annotations

from .generate import check_group_labels, class_balanced_labels, generate
from .guidance import make_velocity_fn

__all__ = ["make_velocity_fn", "generate", "class_balanced_labels", "check_group_labels"]
