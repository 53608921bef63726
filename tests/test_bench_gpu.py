"""bench/gpu.py: on a machine without a GPU it says so and exits 3 with one JSON object as its last line; at toy
size on the CPU (--toy --allow-cpu) every piece runs through the same code the GPU run takes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the bench measures instead")
def test_without_a_gpu_it_says_so_and_exits_3():
    proc = run()
    assert proc.returncode == 3
    assert "no CUDA GPU visible" in proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["status"] == "no_gpu" and "run it on a machine with a GPU" in last["reason"]


@pytest.mark.integration
def test_every_piece_runs_at_toy_size_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run("--toy", "--allow-cpu", "--no-compile", "--seconds", "0.2", "--sample-steps", "2", "--batch", "4",
               "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert result["status"] == "ok" and result["errors"] == {} and result["toy"] is True
    assert result["train"]["eager"]["images_per_s"] > 0 and "compiled" not in result["train"]
    assert sorted(result["group_attention"]) == ["N1", "N16", "N4"]
    assert result["zero2_step"]["steps"] >= 3 and result["zero2_step"]["images_per_s"] > 0
    assert result["faiss_gpu"]["self_hit"] == 1.0  # exact search finds each stored query first
    assert result["inception"]["images_per_s"] > 0
    s = result["sampling"]
    assert (s["mode"], s["group_size"], s["cfg_scale"], s["method"]) == ("groupdiff-l", 4, 2.585, "sde-euler")
    assert s["images_per_s_at_250_steps"] == pytest.approx(s["images_per_s"] * 2 / 250, rel=1e-3)
