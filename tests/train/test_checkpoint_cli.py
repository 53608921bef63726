"""Checkpoint folder rules (atomic, latest pointer, pruning), group tables, and the `groupdiff train` command."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from groupdiff.cli import main
from groupdiff.grouping.table import GroupTable
from groupdiff.train.checkpoint import find_latest, prune, resolve_resume
from groupdiff.train.data import class_neighbours
from groupdiff.train.launch import launcher_command
from groupdiff.train.trainer import train


def _fake(root, step):
    folder = root / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    return folder


def test_half_written_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    good = _fake(root, 4)
    (root / ".tmp-step_00000008").mkdir()  # a crash while writing step 8
    (root / ".tmp-step_00000008" / "trainer_state.json").write_text("{}")
    assert find_latest(tmp_path) == good  # no pointer yet: newest complete folder
    (root / "latest").write_text("step_00000004")
    assert resolve_resume("auto", tmp_path) == good and resolve_resume(str(tmp_path), tmp_path) == good
    (root / "latest").write_text("step_00000012")  # pointer to a folder that is gone: fall back
    assert find_latest(tmp_path) == good
    assert resolve_resume("off", tmp_path) is None
    assert resolve_resume("auto", tmp_path / "empty") is None


def test_prune_keeps_the_newest_and_the_pointed_one(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3, 4):
        _fake(root, s)
    (root / "latest").write_text("step_00000001")
    prune(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000001", "step_00000003", "step_00000004"]


def test_training_on_a_mined_group_table(tmp_path, tiny_config, fmnist_small):
    images, labels = fmnist_small
    n = len(labels)
    nb = class_neighbours(labels.numpy(), 8, 3)
    table = GroupTable(nb, np.ones(nb.shape, np.float32), np.zeros(nb.shape, bool), np.ones(n, bool),
                       nb[:, :4], labels.numpy(), {"digest": "test"})
    path = table.save(tmp_path / "groups.npz")
    cfg = tiny_config("train.variant=groupdiff-f", f"train.groups_path={path}", "train.steps=1",
                      "train.record_indices=true")
    train(cfg, tmp_path / "run", data=fmnist_small)
    seen = json.loads((tmp_path / "run" / "indices" / "rank0.jsonl").read_text().splitlines()[0])["indices"]
    groups = np.asarray(seen).reshape(-1, 4)
    assert (labels.numpy()[groups] == labels.numpy()[groups[:, :1]]).all()  # groups follow the table (same class)
    other = GroupTable(nb, table.similarity, table.filled, table.eligible, table.groups, (labels.numpy() + 1) % 10,
                       {"digest": "other"}).save(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="mined on another dataset"):
        train(tiny_config("train.variant=groupdiff-f", f"train.groups_path={other}"), tmp_path / "x", data=fmnist_small)


def test_cli_trains_resumes_and_refuses_bad_world_sizes(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny-fmnist", "--variant", "groupdiff-l", "--group-size", "4", "--out", str(out)]
    for item in tiny_overrides + ["train.group_ratio=0.5", "train.steps=2"]:
        args += ["--set", item]
    assert main(args) == 0
    assert (out / "checkpoints" / "latest").read_text() == "step_00000002"
    assert main(args + ["--steps", "3", "--resume", "auto"]) == 0
    assert (out / "checkpoints" / "latest").read_text() == "step_00000003"
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3]  # the resumed run continued at step 3, it did not start over
    capsys.readouterr()
    assert main(args + ["--nproc", "3"]) == 2  # 32 images = 8 groups cannot be split over 3 ranks
    assert "world_size=3" in capsys.readouterr().err


def test_launch_commands(tmp_path):
    local = launcher_command("cfg.json", "run", 4)
    assert local[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in local
    assert local[local.index("--nproc_per_node") + 1] == "4" and local[-5:-4] == ["groupdiff.train_worker"]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n")
    multi = launcher_command("cfg.json", "run", 8, hostfile=str(hostfile))
    assert multi[1:3] == ["-m", "deepspeed.launcher.runner"] and multi[multi.index("--hostfile") + 1] == str(hostfile)
    assert "--no_local_rank" in multi and multi[multi.index("--module") + 1] == "groupdiff.train_worker"
    assert multi[multi.index("--num_gpus") + 1] == "8"
    with pytest.raises(FileNotFoundError, match="hostfile"):
        launcher_command("cfg.json", "run", 1, hostfile="/nonexistent/hostfile")
    assert launcher_command("cfg.json", "run", 1)[1:] == [  # one local rank: the worker itself, no launcher
        "-m", "groupdiff.train_worker", "--config", "cfg.json", "--out", "run"]


def test_a_plugged_in_tracker_receives_the_metrics(tmp_path, tiny_config, fmnist_small, monkeypatch):
    """How registry/ plugs MLflow into launched ranks: $GROUPDIFF_TRACKER names a factory(run_dir)."""
    received = []

    class ListTracker:
        def log_params(self, params):
            received.append(("params", params["train"]["variant"]))

        def log_metrics(self, metrics, step=None):
            received.append(("metrics", step, metrics.get("loss")))

        def log_artifact(self, path, name=None):
            pass

        def close(self):
            received.append(("closed",))

    plugin = types.ModuleType("gd_test_tracker_plugin")
    plugin.make = lambda run_dir: ListTracker()
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)
    monkeypatch.setenv("GROUPDIFF_TRACKER", "gd_test_tracker_plugin:make")
    train(tiny_config("train.steps=2"), tmp_path, data=fmnist_small)
    losses = [json.loads(x)["metrics"]["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert received[0] == ("params", "baseline") and received[-1] == ("closed",)
    assert [r[2] for r in received if r[0] == "metrics"] == losses and len(losses) == 2
    monkeypatch.setenv("GROUPDIFF_TRACKER", "no_colon_here")
    with pytest.raises(ValueError, match="module:factory"):
        train(tiny_config("train.steps=2"), tmp_path / "x", data=fmnist_small)
