"""SIGKILL the training process of a pipeline run at three points, re-run the same parameters after each: the
training resumes from the last complete checkpoint (never a half-written one) and the run ends with the weights
of an uninterrupted training of the same config.

Kill points (exact, through the checkpoint writer's hold hook ``GROUPDIFF_CHECKPOINT_HOLD``):
1. in the first steps: 10 steps trained, nothing saved (held before the first checkpoint is written);
2. during a checkpoint write: step 10 saved, step 20's temp folder holds ``model.safetensors`` and the DeepSpeed
   state but not the rest;
3. after the last checkpoint: step 40 saved and ``latest`` rewritten, the flow not yet past the training.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.train.checkpoint import HOLD_ENV, CheckpointDir, find_latest
from tests.faults.conftest import TINY, FlowInThread, artefact_problems, kill_training, wait_for_hold

pytestmark = pytest.mark.integration

STEPS, EVERY = 40, 10
PARAMS = {**TINY, "train_steps": STEPS, "checkpoint_every": EVERY}


def _uninterrupted(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """The same training config launched the way the flow launches it, never interrupted (in the background)."""
    from flows.params import PipelineParams
    from groupdiff.train.launch import start, write_launch_config

    config = PipelineParams(**PARAMS).config("baseline")
    run_dir = tmp_path / "uninterrupted"
    with open(tmp_path / "uninterrupted.log", "wb") as log:  # the child keeps its own copy of the file
        proc = start(write_launch_config(config, run_dir), run_dir, 1, env={HOLD_ENV: ""}, stdout=log,
                     stderr=subprocess.STDOUT)
    return proc, run_dir


def _failed_by_the_kill(flow: FlowInThread) -> None:
    state = flow.result()
    assert state.is_failed(), state
    assert "training exited with code -9" in state.message, state.message


def _init_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "init_report.json").read_text())


def test_training_killed_at_three_points_resumes_to_the_uninterrupted_weights(fault_stack, tmp_path, monkeypatch):
    out = fault_stack.out
    reference, reference_dir = _uninterrupted(tmp_path)
    t0 = time.monotonic()

    # 1. in the first steps: nothing saved yet; the re-run starts over
    monkeypatch.setenv(HOLD_ENV, f"start:{EVERY}")
    flow = FlowInThread(PARAMS, fault_stack.records)
    marker = wait_for_hold(out, "start", EVERY, flow)
    run_dir = marker.parent.parent
    assert find_latest(run_dir) is None and not list((run_dir / "checkpoints").glob("*step_*"))
    kill_training(out, marker)
    _failed_by_the_kill(flow)
    print(f"kill 1 (first steps) after {time.monotonic() - t0:.1f}s")

    # 2. during the write of the checkpoint at step 20: step 10 is the last complete one
    monkeypatch.setenv(HOLD_ENV, f"partial:{2 * EVERY}")
    flow = FlowInThread(PARAMS, fault_stack.records)
    marker = wait_for_hold(out, "partial", 2 * EVERY, flow)
    assert marker.parent.parent == run_dir and _init_report(run_dir)["mode"] == "scratch"
    half = CheckpointDir(run_dir / "checkpoints" / f".tmp-step_{2 * EVERY:08d}")
    assert half.ema_file.is_file() and half.ds_dir.is_dir() and not half.is_complete()
    assert find_latest(run_dir) == run_dir / "checkpoints" / f"step_{EVERY:08d}"
    kill_training(out, marker)
    _failed_by_the_kill(flow)
    print(f"kill 2 (checkpoint write) after {time.monotonic() - t0:.1f}s")

    # 3. after the last checkpoint: the re-run resumed from step 10, not from the half-written step 20
    monkeypatch.setenv(HOLD_ENV, f"done:{STEPS}")
    flow = FlowInThread(PARAMS, fault_stack.records)
    marker = wait_for_hold(out, "done", STEPS, flow)
    report = _init_report(run_dir)
    assert report["mode"] == "resume" and report["source"] == str(run_dir / "checkpoints" / f"step_{EVERY:08d}"), report
    assert find_latest(run_dir) == run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the half-written folder was replaced, never read
    kill_training(out, marker)
    _failed_by_the_kill(flow)
    print(f"kill 3 (after the last checkpoint) after {time.monotonic() - t0:.1f}s")

    # the last re-run publishes the finished training without launching it again
    monkeypatch.delenv(HOLD_ENV)
    log_size = (run_dir / "train.log").stat().st_size
    state = FlowInThread(PARAMS, fault_stack.records).result()
    assert state.is_completed(), state
    assert (run_dir / "train.log").stat().st_size == log_size
    [row] = state.result()["rows"]
    print(f"completed after {time.monotonic() - t0:.1f}s")

    assert reference.wait(timeout=300) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]
    published = out / "work" / "checkpoints" / run_dir.name / f"{STEPS:08d}"
    straight = reference_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert row["checkpoint"].endswith(f"checkpoints/{run_dir.name}/{STEPS:08d}")
    _same_weights(published, straight)
    assert artefact_problems(fault_stack) == []


def _same_weights(resumed: Path, straight: Path) -> None:
    """Raw and EMA weights equal: to float32 rounding of the largest magnitude in each tensor (a restored fp32
    state continues the same arithmetic on one machine; only summation order could differ)."""
    for name in (CheckpointDir.RAW, CheckpointDir.EMA):
        a, b = load_file(str(resumed / name)), load_file(str(straight / name))
        assert a.keys() == b.keys()
        for key in a:
            tol = 16 * torch.finfo(torch.float32).eps * max(1.0, float(b[key].abs().max()))
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=tol, msg=f"{name}:{key}")
        exact = all(torch.equal(a[k], b[k]) for k in a)
        print(f"{name}: {'bit-identical' if exact else 'equal within tolerance'} to the uninterrupted run")
