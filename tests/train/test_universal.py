"""Resume on another world size: ZeRO-2 on 2 ranks (real DeepSpeed processes, gloo) -> DeepSpeed's universal
checkpoint -> 1 rank continues as the 2-rank run did (same weights, same AdamW moments, same next draws)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.train.trainer import train
from groupdiff.train.universal import MODEL_STATES, convert_to_universal, universal_dir

pytestmark = pytest.mark.integration

OPTS = ["train.variant=groupdiff-l", "train.zero_stage=2", "train.record_indices=true"]


def _indices(run_dir, rank: int) -> dict[int, list[int]]:
    lines = (run_dir / "indices" / f"rank{rank}.jsonl").read_text().splitlines()
    return {(r := json.loads(x))["step"]: r["indices"] for x in lines}


def _max_abs_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_config):
    """4 ZeRO-2 steps on 2 ranks through `groupdiff train --nproc 2`, checkpoints at steps 3 and 4."""
    import yaml

    folder = tmp_path_factory.mktemp("universal")
    preset, out = folder / "tiny.yaml", folder / "two"
    preset.write_text(yaml.safe_dump(tiny_config(*OPTS, "train.steps=4", "train.checkpoint_every=3").model_dump()))
    cmd = [sys.executable, "-m", "groupdiff.cli", "train", "--preset", str(preset), "--nproc", "2", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_zero2_two_ranks_resume_on_one_rank(two_rank_run, tmp_path, tiny_config, fmnist_small):
    step3, step4 = two_rank_run / "checkpoints" / "step_00000003", two_rank_run / "checkpoints" / "step_00000004"
    assert json.loads((step3 / "trainer_state.json").read_text())["world_size"] == 2

    resumed = train(tiny_config(*OPTS, "train.steps=4", "train.checkpoint_every=4", f"train.resume={step3}"),
                    tmp_path / "one", data=fmnist_small)
    report = json.loads((tmp_path / "one" / "init_report.json").read_text())
    assert resumed.step == 4 and report["mode"] == "resume-universal" and "AdamW moments" in report["note"]
    assert (universal_dir(step3) / "state" / MODEL_STATES).is_file()

    # the universal copy holds exactly the 2-rank run's fp32 weights and AdamW state of step 3
    zero = universal_dir(step3) / "state" / "zero"
    raw3 = load_file(str(step3 / "weights.safetensors"))
    for name, value in raw3.items():
        saved = torch.load(zero / name / "fp32.pt", weights_only=False)["param"]
        torch.testing.assert_close(saved.reshape(value.shape), value, rtol=0, atol=1e-6, msg=name)
    moments = [torch.load(p, weights_only=False)["param"] for p in sorted(zero.glob("*/exp_avg_sq.pt"))]
    assert len(moments) >= len(raw3) - 2 and all(bool((m >= 0).all()) for m in moments)
    assert sum(float(m.sum()) for m in moments) > 0

    # the same next draws: step 3's global batch on 1 rank = rank 0's + rank 1's shares of the 2-rank run
    one = _indices(tmp_path / "one", 0)
    two = [_indices(two_rank_run, r) for r in (0, 1)]
    assert sorted(one) == [3] and one[3] == two[0][3] + two[1][3]

    # the same weights after the step: moments carried over, only the float summation order differs. AdamW
    # moves a weight by ~lr = 1e-3 per step; a lost moment (fresh AdamW) changes the step by ~lr (below).
    for name in ("weights.safetensors", "model.safetensors"):
        got, want = load_file(str(resumed.checkpoint / name)), load_file(str(step4 / name))
        assert _max_abs_diff(got, want) <= 1e-6, name


def test_without_the_moments_the_run_diverges(two_rank_run, tmp_path, tiny_config, fmnist_small):
    """What the universal path buys: the consolidated fallback (ZeRO-0 resume: fresh AdamW moments) ends
    step 4 ~lr away from the 2-rank run, three orders above the 1e-6 the test above holds."""
    step3, step4 = two_rank_run / "checkpoints" / "step_00000003", two_rank_run / "checkpoints" / "step_00000004"
    resumed = train(tiny_config("train.variant=groupdiff-l", "train.zero_stage=0", "train.steps=4",
                                "train.checkpoint_every=4", f"train.resume={step3}"), tmp_path / "fresh", data=fmnist_small)
    report = json.loads((tmp_path / "fresh" / "init_report.json").read_text())
    assert report["mode"] == "resume-consolidated" and "do NOT" in report["note"]
    diff = _max_abs_diff(load_file(str(resumed.checkpoint / "weights.safetensors")),
                         load_file(str(step4 / "weights.safetensors")))
    assert diff > 1e-4


def test_convert_names_a_missing_deepspeed_state(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no DeepSpeed state"):
        convert_to_universal(tmp_path, "state")
    assert not list(tmp_path.iterdir())  # nothing half-written
