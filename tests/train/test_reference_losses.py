"""Training cannot change silently: the first 50 losses of the tiny preset, for each variant, match the curves
recorded in ``tests/assets/reference_losses.json`` (fp32, CPU, one thread, the preset's seed; written by
``tests/assets/make_reference_losses.py`` from the code before the layering refactor).

Tolerance: the same curves computed with 2 threads instead of 1 differ by at most 1.7e-7 (relative) here;
another CPU's fp32 kernels round differently and 50 AdamW steps amplify that, so the bound is 2e-4 (over
1000x the measured spread). A different draw order, loss or optimiser step moves the curve far more: the
preset with another seed differs by > 100x the bound (checked below, so the comparison cannot pass vacuously).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
from make_reference_losses import OVERRIDES, STEPS, VARIANTS, reference_losses  # noqa: E402

RTOL = 2e-4
REFERENCE = json.loads((ASSETS / "reference_losses.json").read_text())


def test_reference_matches_its_recipe():
    assert REFERENCE["overrides"] == OVERRIDES and REFERENCE["steps"] == STEPS
    assert sorted(REFERENCE["losses"]) == sorted(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_first_losses_match_the_reference(variant, tmp_path, one_torch_thread):
    got = np.array(reference_losses(variant, tmp_path))
    want = np.array(REFERENCE["losses"][variant])
    rel = np.abs(got - want) / np.abs(want)
    assert rel.max() <= RTOL, f"{variant}: step {int(rel.argmax()) + 1} loss {got[rel.argmax()]:.7f} vs reference " \
                              f"{want[rel.argmax()]:.7f} (relative {rel.max():.2e} > {RTOL})"


def test_another_seed_is_far_outside_the_tolerance(tmp_path, one_torch_thread, monkeypatch):
    import make_reference_losses as recipe

    monkeypatch.setattr(recipe, "OVERRIDES", [*OVERRIDES, "train.seed=1"])
    got = np.array(reference_losses("baseline", tmp_path))
    want = np.array(REFERENCE["losses"]["baseline"])
    assert (np.abs(got - want) / np.abs(want)).max() > 100 * RTOL
