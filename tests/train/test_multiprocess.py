"""Two ranks through `groupdiff train --nproc 2` (torch.distributed.run, gloo, ZeRO-2) against one rank."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groupdiff.grouping.plans import build_epoch_plan
from groupdiff.train.data import class_neighbours
from groupdiff.train.trainer import train

OPTS = ["train.variant=groupdiff-f", "train.zero_stage=2", "train.steps=3", "train.checkpoint_every=3",
        "train.micro_batch_images=16", "train.record_indices=true"]


@pytest.mark.integration
def test_two_ranks_see_disjoint_data_and_match_one_rank(tmp_path, tiny_config, tiny_overrides, fmnist_small):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "groupdiff.cli", "train", "--preset", "tiny-fmnist", "--nproc", "2", "--out", str(out)]
    for item in tiny_overrides + OPTS:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    seen = [[json.loads(x) for x in (out / "indices" / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)]
    images, labels = fmnist_small
    nb = class_neighbours(labels.numpy(), 32, 0)
    plan = build_epoch_plan("groupdiff-f", len(labels), 32, 4, 0, 0, nb)
    for step in range(3):
        a, b = seen[0][step]["indices"], seen[1][step]["indices"]
        assert not set(a) & set(b) and len(a) == len(b) == 16
        assert a + b == plan[step].indices.tolist()  # each rank holds whole groups, in plan order
    state = json.loads((out / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["world_size"] == 2

    one = train(tiny_config(*OPTS), tmp_path / "one", data=fmnist_small)  # 1 rank, accumulation 2
    for name in ("weights.safetensors", "model.safetensors"):
        x, y = load_file(str(one.checkpoint / name)), load_file(str(out / "checkpoints" / "step_00000003" / name))
        for key in x:
            # fp32 across world sizes: 2 ranks all-reduce gradients in another order than 1 rank's accumulation
            # (agreeing to ~1e-6 relative). AdamW moves each weight by <= lr = 1e-3 a step (3e-3 over 3 steps),
            # so 2e-5 (<1% of that movement) tolerates the rounding and still catches a wrong reduction or
            # averaging, which changes weights by ~lr.
            torch.testing.assert_close(y[key], x[key], rtol=0, atol=2e-5, msg=f"{name}:{key}")

    # the 2-rank ZeRO-2 checkpoint resumes on 1 rank through DeepSpeed's universal checkpoint, with a note
    # (exactness of that path: tests/train/test_universal.py)
    more = train(tiny_config(*OPTS[:-2], "train.steps=4", "train.checkpoint_every=4", f"train.resume={out}"),
                 tmp_path / "cont", data=fmnist_small)
    report = json.loads((tmp_path / "cont" / "init_report.json").read_text())
    assert more.step == 4 and report["mode"] == "resume-universal" and "AdamW moments" in report["note"]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.integration
def test_sigterm_stops_every_rank(tmp_path, tiny_overrides):
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "groupdiff.cli", "train", "--preset", "tiny-fmnist", "--nproc", "2", "--out", str(out)]
    for item in tiny_overrides + ["train.steps=100000", "train.checkpoint_every=100000"]:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.Popen(cmd, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").exists() and '"loss"' in (out / "metrics.jsonl").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        assert len(_processes_mentioning(str(out))) >= 3  # the command, the launcher and two ranks
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(1)
        assert _processes_mentioning(str(out)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
