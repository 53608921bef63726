"""Bad input, catalogued: what each kind of bad value gets (README "Bad input"), one test per row.

Every row is refused before work starts with one error line that names the value and what was expected
(the command exits 2, no traceback), and leaves nothing behind (no output folder). The form rows are the
Prefect UI form's parameters (``PipelineParams``, validated the same way by the server and by
``groupdiff run``). Checkpoint and weight files (truncated/corrupt safetensors, wrong-model weights, pickles
carrying code) have their own table rows, tested in ``tests/models/test_safe_loading.py``.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from flows.params import PipelineParams
from infra.cli import main


def rgb_folder(root) -> None:
    for c in ("bag", "shoe"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((16, 16, 3), 30 * i, dtype=np.uint8)).save(root / c / f"{i}.png")


# (id, argv with {tmp} for the test's folder, the message expected on stderr)
CLI_ROWS = [
    ("unknown preset", ["train", "--preset", "nope"], r"unknown preset 'nope'; expected one of \[.*'tiny-fmnist'\]"),
    ("field out of range", ["train", "--set", "model.depth=0"], r"model\.depth\n.*greater than or equal to 1.*input_value=0"),
    ("field of the wrong type", ["train", "--set", "model.depth=abc"], r"model\.depth\n.*valid integer.*input_value='abc'"),
    ("unknown variant", ["train", "--set", "train.variant=groupdiff-x"],
     r"train\.variant\n.*'baseline', 'groupdiff-l' or 'groupdiff-f'.*input_value='groupdiff-x'"),
    ("group size not dividing the batch", ["train", "--set", "train.variant=groupdiff-l", "--set", "train.group_size=3"],
     r"train\.global_batch_images=64 is not divisible by train\.group_size=3"),
    ("negative step count", ["train", "--set", "train.steps=-5"], r"train\.steps\n.*greater than or equal to 1.*input_value=-5"),
    ("empty global batch", ["train", "--set", "train.global_batch_images=0"], r"train\.global_batch_images\n.*greater than or equal to 1"),
    ("unknown config section", ["train", "--set", "nosuch.field=1"], r"nosuch\n.*Extra inputs are not permitted"),
    ("a value where a section belongs", ["train", "--set", "model=3"], r"model\n.*valid dictionary or instance of ModelConfig"),
    ("override without a value", ["train", "--set", "train.lr"], r"override 'train\.lr' is not of the form section\.field=value"),
    ("init_from of unknown form", ["train", "--set", "train.init_from=foo"], r"train\.init_from='foo'; expected 'scratch' or 'pretrained:<path>'"),
    ("pretrained checkpoint missing", ["train", "--set", "train.init_from=pretrained:{tmp}/w.safetensors"],
     r"checkpoint '{tmp}/w\.safetensors' does not exist"),
    ("image folder without a root", ["train", "--set", "data.dataset=imagefolder"], r"data\.dataset='imagefolder' needs data\.root"),
    ("image folder root missing", ["train", "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/none"],
     r"image folder {tmp}/none does not exist"),
    ("image folder root empty", ["train", "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/empty"],
     r"image folder {tmp}/empty holds no images: expected root/<class>/<image>"),
    ("image folder that does not fit the model", ["train", "--set", "data.dataset=imagefolder", "--set", "data.root={tmp}/rgb",
     "--set", "train.global_batch_images=8"], r"data\.dataset='imagefolder' gives images of shape \(16, 3, 16, 16\) but model expects \(N, 1, 16, 16\)"),
    ("checkpoint folder missing", ["sample", "--checkpoint", "{tmp}/ckpt", "--num-samples", "40"],
     r"checkpoint dir '{tmp}/ckpt' has no model\.safetensors"),
    ("group larger than the model's table", ["sample", "--num-samples", "40", "--set", "guidance.mode=groupdiff-l",
     "--set", "guidance.group_size=32"], r"guidance\.group_size=32 exceeds model\.max_group_size=8"),
    ("baseline guidance with a group", ["sample", "--num-samples", "40", "--set", "guidance.mode=baseline", "--set",
     "guidance.group_size=4"], r"guidance\.mode='baseline' needs guidance\.group_size=1, got 4"),
    ("guidance interval reversed", ["sample", "--num-samples", "40", "--set", "guidance.interval_low=0.8", "--set",
     "guidance.interval_high=0.2"], r"guidance\.interval_low=0\.8 is above guidance\.interval_high=0\.2"),
    ("sample count not in whole groups", ["sample", "--num-samples", "41", "--set", "guidance.mode=groupdiff-l", "--set",
     "guidance.group_size=4"], r"num_samples=41 is not a multiple of num_classes=10 x group_size=4 = 40"),
    ("unknown weights choice", ["sample", "--num-samples", "40", "--weights", "best"], r"invalid choice: 'best' \(choose from 'ema', 'raw'\)"),
    ("threshold out of range", ["mine", "--set", "mine.tau=2"], r"mine\.tau\n.*less than or equal to 1.*input_value=2"),
    ("similarity mining without embeddings", ["mine"], r"mine\.mode='similarity' needs --embeddings DIR"),
    ("CLIP without local weights", ["embed", "--set", "embed.encoder=clip"], r"clip encoder \(ViT-L-14\): no weights file configured"),
    ("latents given to the latent encoder", ["encode-latents", "--set", "data.dataset=latents", "--set", "data.root={tmp}/lat"],
     r"data\.dataset='latents' is already encoded"),
    ("samples file missing", ["score", "{tmp}/none.npz"], r"samples file '{tmp}/none\.npz' does not exist"),
    ("samples file corrupt", ["score", "{tmp}/garbage.npz"], r"{tmp}/garbage\.npz is not a samples \.npz: expected a zip of \.npy arrays"),
    ("dataset version of the wrong kind", ["train", "--set", "data.dataset=latents", "--set", "data.root={tmp}/version"],
     r"data\.dataset='latents' reads latents, but {tmp}/version holds pixels \(set data\.dataset='imagefolder'\)"),
    ("dataset version of another image size", ["train", "--set", "data.dataset=imagefolder", "--set",
     "data.root={tmp}/version", "--set", "data.image_size=32"],
     r"data\.image_size=32 but {tmp}/version holds 16 px images \(ingested at that size\); set data\.image_size=16"),
    ("store URI of unknown scheme", ["check", "--store-root", "bogus://x", "--mlflow-uri", "none"],
     r"store URI 'bogus://x': unsupported scheme 'bogus'; expected 's3' or 'file'"),
    ("store URI without a bucket", ["check", "--store-root", "s3://", "--mlflow-uri", "none"],
     r"store URI 's3://': bucket '' is not a valid S3 bucket name"),
]
OUT_COMMANDS = {"train", "sample", "mine", "embed", "encode-latents"}  # commands that take --out


@pytest.mark.parametrize("argv, message", [(argv, msg) for _, argv, msg in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_bad_command_input_is_one_line_naming_the_value_and_leaves_nothing(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rgb_folder(tmp_path / "rgb")
    if "{tmp}/version" in " ".join(argv):
        from groupdiff.data.config import IngestConfig
        from groupdiff.data.ingest import ingest_images

        ingest_images(tmp_path / "rgb", tmp_path / "version", IngestConfig(image_size=16))
    (tmp_path / "garbage.npz").write_bytes(b"not an npz at all")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "out.npz" if argv[0] == "mine" else tmp_path / "out"
    if argv[0] in OUT_COMMANDS:
        argv += ["--out", str(out)]
    with pytest.raises(SystemExit) if "invalid choice" in message else _no_exit() as exited:
        code = main(argv)
    err = capsys.readouterr().err
    code = exited.value.code if exited is not None else code
    assert code == 2, err
    assert re.search(message.replace("{tmp}", re.escape(str(tmp_path))), err), err
    assert "Traceback" not in err
    assert not out.exists(), f"{argv[0]} left {out} behind"


class _no_exit:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


FORM_ROWS = [
    ("group size 0", {"group_size": 0}, "group_size", "greater than or equal to 2"),
    ("group size of the wrong type", {"group_size": "four"}, "group_size", "valid integer"),
    ("unknown variant", {"variants": ["baseline", "groupdiff-x"]}, "variants", "'baseline', 'groupdiff-l' or 'groupdiff-f'"),
    ("duplicate variant", {"variants": ["baseline", "baseline"]}, "", "variants ['baseline', 'baseline'] holds a duplicate"),
    ("threshold out of range", {"threshold": 2.0}, "threshold", "less than or equal to 1"),
    ("samples not in class-balanced groups", {"group_size": 4, "num_samples": 50}, "",
     "num_samples=50 must be a multiple of 10 classes x group_size 4 = 40"),
    ("batch not in whole groups", {"group_size": 4, "batch_images": 30}, "", "batch_images=30 must be a multiple of group_size=4"),
    ("no room for the real-data floor", {"reference_limit": 9000, "num_samples": 2000}, "",
     "reference_limit=9000 + num_samples=2000 exceeds the 10000 test images"),
    ("unknown preset", {"preset": "nope"}, "", "unknown preset 'nope'"),
    ("unknown sampler", {"sampler": "ddim"}, "sampler", "'ode-euler', 'ode-heun' or 'sde-euler'"),
]


@pytest.mark.parametrize("values, field, message", [r[1:] for r in FORM_ROWS], ids=[r[0] for r in FORM_ROWS])
def test_bad_form_values_are_refused_naming_the_field(values, field, message):
    with pytest.raises((ValidationError, ValueError)) as info:
        PipelineParams(**values)
    assert message in str(info.value)
    if field:
        assert info.value.errors()[0]["loc"][0] == field


def test_a_pretrained_weights_path_that_does_not_exist_fails_before_work(tmp_path):
    params = PipelineParams(init_from=f"pretrained:{tmp_path}/champion.safetensors")
    with pytest.raises(FileNotFoundError, match=f"checkpoint '{tmp_path}/champion.safetensors' does not exist"):
        params.validate_configs()


# rows whose command keeps records under --out (the embedded Prefect/catalogue state): nothing is published there.
# The corrupt file is found inside the ingest flow run (its first pass), so Prefect's log of the failed run (with
# its traceback, as the UI shows it) comes before the command's own one-line error.
RECORD_ROWS = [
    ("ingest source with a corrupt file", ["ingest", "{tmp}/bad", "--name", "shapes", "--embedded"],
     r"ingest source {tmp}/bad: 1 corrupt or non-image files: \['bag/x\.png'\]; remove them or set on_corrupt='skip'",
     True),
    ("a dataset version that does not exist", ["run", "--set", "pipeline.dataset=shapes@3"],
     r"dataset 'shapes@3': no versions of 'shapes' in the catalogue", False),
]


@pytest.mark.parametrize("argv, message, flow_log", [r[1:] for r in RECORD_ROWS], ids=[r[0] for r in RECORD_ROWS])
def test_bad_data_input_names_the_value_and_publishes_nothing(argv, message, flow_log, tmp_path, capsys):
    (tmp_path / "bad" / "bag").mkdir(parents=True)
    (tmp_path / "bad" / "bag" / "x.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"groupdiff {argv[0]}: error:")]
    assert code == 2 and len(lines) == 1 and re.search(message.replace("{tmp}", re.escape(str(tmp_path))), lines[0]), err
    assert flow_log or "Traceback" not in err
    written = [p for p in out.rglob("*") if p.is_file() and p.parent.name not in ("prefect", out.name)]
    assert not written, f"{argv[0]} wrote {written}"  # only the records' own databases, no version, no run

