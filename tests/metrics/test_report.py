"""sample -> score -> report on a tiny model and a random built-in classifier, plus the report pieces."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from groupdiff.cli import main
from groupdiff.config import load_preset
from groupdiff.encoders.classifier import SmallCNN, save_classifier
from groupdiff.models import build_model
from groupdiff.report import build_report, collect_evaluations
from groupdiff.report.plots import pearson

torch.set_num_threads(1)
TINY = ["model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.input_size=8", "model.patch_size=4",
        "model.num_classes=3", "model.max_group_size=4", "sampler.method=ode-euler", "sampler.num_steps=2"]


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1])
    assert pearson([1, 2], [3, 4]) is None and pearson([1, 1, 1], [1, 2, 3]) is None


def test_sample_score_report_end_to_end(tmp_path):
    config = load_preset("tiny-fmnist", TINY)
    torch.manual_seed(0)
    model = build_model(config.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(config.model_dump_json())
    clf = SmallCNN(width=4, feature_dim=8, num_classes=10, image_size=8).eval()
    for p in clf.parameters():
        torch.nn.init.normal_(p, std=0.5)
    save_classifier(clf, tmp_path / "clf.safetensors")

    runs = [("baseline", 1), ("groupdiff-f", 2), ("groupdiff-l", 3)]
    for mode, n in runs:
        out = tmp_path / "run" / f"{mode}-{n}"
        assert main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--num-samples", "18",
                     "--set", f"guidance.mode={mode}", "--set", f"guidance.group_size={n}",
                     "--cfg-scales", "2.0", "--batch-groups", "9", "--grid-groups", "3"]) == 0
        assert main(["score", str(out / "cfg2" / "samples.npz"), "--classifier-weights", str(tmp_path / "clf.safetensors"),
                     "--reference-limit", "40", "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = collect_evaluations([tmp_path / "run"])
    assert [(r["context"]["mode"], r["context"]["group_size"]) for r in rows] == sorted(runs)
    assert all(r["context"]["cfg_scale"] == 2.0 for r in rows)
    assert ("s_cross" in rows[0]["metrics"]) is False  # baseline has no cross-sample attention
    assert all("s_cross" in r["metrics"] for r in rows[1:])

    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    models = [line for line in table if "real-data floor" not in line]
    floors = [line for line in table if "| real-data floor |" in line]
    assert len(models) == 3 and len(floors) == 3  # each evaluation with its real-data floor beside it
    assert all(" | ema | " in line for line in models)  # which checkpoint weights were sampled
    assert all(table[2 * i + 1].startswith(f"| {i} floor |") for i in range(3))
    assert "fd_fmnist" in text and "| fid" not in text
    for name in ("metric_vs_group_size.png", "s_cross_vs_fd_fmnist.png", "grid_0.png", "grid_2.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    # two evaluations with S_cross: the correlation is reported as not available, not invented
    assert "n/a (fewer than 3 evaluations" in text


def test_report_correlation_over_evaluations(tmp_path):
    s, fd = [0.1, 0.2, 0.3, 0.4], [5.0, 4.0, 3.5, 2.0]
    for i, (a, b) in enumerate(zip(s, fd)):
        (tmp_path / f"metrics_{i}.json").write_text(json.dumps(
            {"metrics": {"fid": b, "s_cross": a}, "context": {"mode": "groupdiff-l", "group_size": 2 ** i, "cfg_scale": 1.0},
             "num_samples": 10}))
    report = build_report([tmp_path], tmp_path / "out")
    r = np.corrcoef(s, fd)[0, 1]
    assert f"**{r:.3f}**" in report.read_text()
    assert (tmp_path / "out" / "s_cross_vs_fid.png").is_file()


def test_report_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        collect_evaluations([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no metrics JSON"):
        collect_evaluations([tmp_path])
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="not a metrics JSON"):
        collect_evaluations([tmp_path])
