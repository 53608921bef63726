"""bench/claims.py: the verdict logic (a difference inside the seed spread is not held), the settings' checks and
the dry run's planned wall time; the study itself is a benchmark (bench/claims.py --quick), not run here."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "claims.py"
spec = importlib.util.spec_from_file_location("bench_claims", SCRIPT)
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)


def arms_with(fd: dict[str, list[float]]) -> dict[str, dict]:
    return {name: {claims.FD: claims.spread(values)} for name, values in fd.items()}


def settings(**update) -> "claims.ClaimsSettings":
    return claims.ClaimsSettings(**{**claims.default_settings(False, 100), **update})


def test_beats_needs_a_lower_mean_and_seed_ranges_apart():
    assert claims.beats(claims.spread([1.0, 2.0]), claims.spread([3.0, 4.0]))["held"]
    within = claims.beats(claims.spread([1.0, 3.5]), claims.spread([3.0, 4.0]))
    assert within["lower_mean"] and not within["beyond_seed_spread"] and not within["held"]
    assert not claims.beats(claims.spread([5.0]), claims.spread([4.0]))["held"]


def test_claims_held_and_not_held():
    s = settings()
    good = arms_with({"baseline": [10, 11], "groupdiff-l N=2 similarity": [8, 8.5], "groupdiff-l N=4 similarity": [6, 6.5],
                      "groupdiff-l N=8 similarity": [4, 4.5], "groupdiff-l N=4 class": [7, 7.5],
                      "groupdiff-l N=4 random": [9, 9.5]})
    points = [(0.1, 9.0), (0.2, 7.0), (0.3, 5.0), (0.4, 3.2)]
    out = claims.check_claims(good, points, s)
    assert all(c["held"] and c["verdict"] == "held" for c in out.values())
    bad = {**good, "groupdiff-l N=4 similarity": arms_with({"x": [10.5, 12]})["x"]}
    out = claims.check_claims(bad, [(0.1, 1.0), (0.2, 3.0), (0.3, 1.0)], s)
    assert not out["groupdiff_l_beats_baseline"]["held"] and "higher mean" in out["groupdiff_l_beats_baseline"]["detail"]
    assert not out["larger_n_is_better"]["held"] and not out["similarity_class_random"]["held"]
    assert not out["s_cross_correlates_with_fd"]["held"]
    smoke = claims.check_claims(good, points, settings(smoke=True))
    assert smoke["larger_n_is_better"]["verdict"] == "held (smoke, not evidence)"


def test_pearson():
    assert claims.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert claims.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert claims.pearson([1, 2], [1, 2]) != claims.pearson([1, 2], [1, 2])  # NaN below 3 points


def test_settings_reject_a_sample_count_that_is_not_whole_groups():
    with pytest.raises(ValueError, match="multiple of 10 classes x N=8"):
        settings(num_samples=120)
    with pytest.raises(ValueError, match="outside"):
        settings(group_sizes=[1, 4])


def test_dry_run_prints_the_plan_as_its_last_line():
    for extra, smoke in (([], False), (["--quick"], True)):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *extra], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "planned wall time" in proc.stdout
        last = json.loads(proc.stdout.strip().splitlines()[-1])
        assert last["settings"]["smoke"] is smoke and last["planned_s"] > 0
