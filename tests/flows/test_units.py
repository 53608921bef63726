"""Fast tests of the flow layer without servers: parameter validation, digests, process-group cleanup, summary."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from flows.embedded import split_overrides, verdict
from flows.params import PipelineParams
from flows.pipeline import sample_digest, train_digest
from flows.training import kill_recorded, pid_folder


@pytest.mark.parametrize("field,value,reason", [
    ("group_size", 0, "greater than or equal to 2"),
    ("variants", ["baseline", "groupdiff-x"], "'baseline', 'groupdiff-l' or 'groupdiff-f'"),
    ("threshold", 2.0, "less than or equal to 1"),
])
def test_invalid_parameters_name_field_and_reason(field, value, reason):
    with pytest.raises(ValidationError) as info:
        PipelineParams(**{field: value})
    errors = info.value.errors()
    assert errors[0]["loc"][0] == field
    assert reason in str(info.value)


def test_parameters_that_form_no_valid_config_fail_before_work():
    params = PipelineParams(overrides=["model.class_dropout_prob=0"])
    with pytest.raises(ValueError, match="null label"):
        params.validate_configs()
    with pytest.raises(ValidationError, match="multiple of 10 classes x group_size"):
        PipelineParams(group_size=4, num_samples=50)


def test_train_digest_ignores_guidance_but_not_training_settings():
    base = PipelineParams()
    cfg = base.config("groupdiff-l")
    other_cfg = PipelineParams(cfg_scale=3.0, sampler="sde-euler").config("groupdiff-l")
    more_steps = PipelineParams(train_steps=base.steps() + 1).config("groupdiff-l")
    assert train_digest(cfg, "d", "g") == train_digest(other_cfg, "d", "g")
    assert train_digest(cfg, "d", "g") != train_digest(more_steps, "d", "g")
    assert train_digest(cfg, "d", "g") != train_digest(cfg, "d2", "g")  # new data, new run
    assert train_digest(cfg, "d", "g") != train_digest(cfg, "d", "g2")
    baseline = base.config("baseline")
    assert train_digest(baseline, "d", "g") == train_digest(baseline, "d", "g2")  # baseline does not use groups
    assert sample_digest(cfg, "t", 400, 200, "ema") != sample_digest(other_cfg, "t", 400, 200, "ema")
    assert sample_digest(cfg, "t", 400, 200, "ema") != sample_digest(cfg, "t", 400, 100, "ema")  # batch layout fixes the noise
    assert sample_digest(cfg, "t", 400, 200, "ema") != sample_digest(cfg, "t", 400, 200, "raw")  # other weights, other images


def test_pipeline_settings_split_from_preset_overrides():
    settings, rest = split_overrides(["pipeline.train_steps=7", "model.depth=2", "pipeline.variants=[baseline]"])
    assert settings == {"train_steps": 7, "variants": ["baseline"]}
    assert rest == ["model.depth=2"]
    params = PipelineParams(overrides=rest, **settings)
    assert params.config("baseline").model.depth == 2 and params.config("baseline").train.steps == 7


def test_mining_and_checkpoint_settings_are_fields_with_their_defaults_in_one_place():
    default = PipelineParams(group_size=8).config("groupdiff-l")
    assert (default.mine.top_k, default.mine.use_gpu, default.mine.recall_sample) == (32, "never", 0)
    assert default.train.checkpoint_every == default.train.steps and default.train.keep_last == 1
    assert PipelineParams(group_size=2).config("groupdiff-l").mine.top_k == 16  # at least 16 candidates
    given = PipelineParams(mine_top_k=50, mine_on_gpu="auto", mine_recall_sample=100, checkpoint_every=7,
                           keep_checkpoints=3, train_steps=21).config("groupdiff-l")
    assert (given.mine.top_k, given.mine.use_gpu, given.mine.recall_sample) == (50, "auto", 100)
    assert (given.train.checkpoint_every, given.train.keep_last) == (7, 3)


def test_typed_settings_reach_the_config_as_given_and_text_overrides_win():
    # a value that text would change: ' #' starts a YAML comment, so a formatted 'train.init_from=...' lost the rest
    path = "pretrained:/weights/run #2/model.safetensors"
    assert PipelineParams(init_from=path).config("groupdiff-l").train.init_from == path
    config = PipelineParams(threshold=0.125, overrides=["mine.tau=0.5", "guidance.cfg_scale=2.5"]).config("groupdiff-l")
    assert config.mine.tau == 0.5 and config.guidance.cfg_scale == 2.5  # 'overrides' (the user's text) applied last


def test_kill_recorded_kills_the_whole_process_group(tmp_path):
    # a parent with a child in a new session, like the training subprocess (torchrun + ranks)
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                             "subprocess.Popen(['sleep', '600']); time.sleep(600)"], start_new_session=True)
    folder = pid_folder(tmp_path, "run-1")
    folder.mkdir(parents=True)
    (folder / str(proc.pid)).write_text("{}")
    time.sleep(0.5)
    assert kill_recorded(tmp_path, "run-1") == [proc.pid]
    proc.wait(timeout=10)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    assert not list(folder.iterdir())
    assert kill_recorded(tmp_path, "run-1") == []  # nothing left to kill


def test_verdict_says_plainly_when_the_baseline_wins():
    rows = [{"variant": "baseline", "metrics": {"fd_fmnist": 1.0}},
            {"variant": "groupdiff-l", "metrics": {"fd_fmnist": 2.0}}]
    assert "BASELINE WON" in verdict(rows, "fd_fmnist")
    rows[1]["metrics"]["fd_fmnist"] = 0.5
    text = verdict(rows, "fd_fmnist")
    assert "groupdiff-l measured better" in text and "BASELINE" not in text


def test_only_storage_and_network_errors_are_retried():
    from prefect.states import Completed, Failed

    from flows.common import retry_on_io
    from registry.objectstore import ObjectStoreError

    assert retry_on_io(None, None, Failed(data=ObjectStoreError("put failed: 503")))
    assert retry_on_io(None, None, Failed(data=ConnectionError("refused")))
    assert not retry_on_io(None, None, Failed(data=ValueError("bad config")))
    assert not retry_on_io(None, None, Completed(data=1))


def test_task_cache_key_is_the_content_digest_and_the_store():
    from flows.common import digest_cache_key
    from flows.records import RecordsConfig

    a = RecordsConfig(out="/tmp/a", store_root="file:///tmp/s1")
    b = RecordsConfig(out="/tmp/b", store_root="file:///tmp/s1")  # same store, other work folder
    c = RecordsConfig(out="/tmp/a", store_root="file:///tmp/s2")
    key = digest_cache_key(None, {"records": a, "digest": "abc"})
    assert key.startswith("abc-") and key == digest_cache_key(None, {"records": a.model_copy(), "digest": "abc"})
    assert key != digest_cache_key(None, {"records": b, "digest": "abc"})
    assert key != digest_cache_key(None, {"records": c, "digest": "abc"})
    assert key != digest_cache_key(None, {"records": a, "digest": "abd"})


def test_deployment_parameters_render_as_a_form():
    from flows.pipeline import pipeline

    schema = pipeline.parameters.model_dump()["definitions"]["PipelineParams"]["properties"]
    assert all(field.get("description") for field in schema.values())
    def given(name: str) -> dict:  # optional (empty = the preset's): a typed value or null, which may stay empty
        assert {"type": "null"} in schema[name]["anyOf"]
        return next(option for option in schema[name]["anyOf"] if option != {"type": "null"})

    assert given("encoder")["enum"] == ["pixels", "classifier", "clip", "dinov2"]
    assert given("grouping_mode")["enum"] == ["similarity", "class", "random"]
    assert given("sampler")["enum"] == ["ode-euler", "ode-heun", "sde-euler"]
    assert schema["variants"]["items"]["enum"] == ["baseline", "groupdiff-l", "groupdiff-f"]
    assert (given("group_size")["minimum"], given("group_size")["maximum"]) == (2, 16)
    assert (given("threshold")["minimum"], given("threshold")["maximum"]) == (-1.0, 1.0)


def test_empty_pipeline_fields_take_the_preset_values_so_each_number_has_one_source():
    from flows.params import PRESET_FIELDS

    tiny = PipelineParams()
    assert (tiny.group_size, tiny.batch_images, tiny.threshold, tiny.encoder, tiny.grouping_mode) == (
        4, 64, 0.3, "pixels", "similarity")  # tiny-fmnist.yaml's train/mine/embed values
    moved = PipelineParams(overrides=["train.global_batch_images=96", "train.group_size=8", "mine.tau=0.5",
                                      "mine.mode=class", "embed.encoder=classifier"])
    assert (moved.batch_images, moved.group_size, moved.threshold, moved.grouping_mode, moved.encoder) == (
        96, 8, 0.5, "class", "classifier")
    assert PipelineParams(preset="sit-s2").batch_images == 256  # the preset's, no longer a pipeline copy of 64
    assert PipelineParams(batch_images=32).config("groupdiff-l").train.global_batch_images == 32  # a set field wins
    assert set(PRESET_FIELDS) <= set(PipelineParams.model_fields)
    with pytest.raises(ValueError, match="train.group_size=1 is outside"):
        PipelineParams(overrides=["train.group_size=1"])


def test_fields_filled_from_the_preset_are_dumped_empty_so_another_preset_fills_them_again():
    """The UI form's default and a run's parameters are dumps: a dump of the tiny preset's filled values would pin
    tiny-fmnist's numbers on a run whose form then picks sit-s2 (found by the browser test)."""
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    default = parameter_schema(pipeline).model_dump()["properties"]["params"]["default"]
    assert default["group_size"] is None and default["batch_images"] is None and default["threshold"] is None
    tiny = PipelineParams(group_size=2)
    dumped = tiny.model_dump(mode="json")
    assert dumped["group_size"] == 2 and dumped["batch_images"] is None  # what the run set stays set
    assert tiny.model_dump(context={"resolved": True})["batch_images"] == 64  # what MLflow records
    moved = PipelineParams.model_validate({**dumped, "preset": "sit-s2"})
    assert (moved.group_size, moved.batch_images) == (2, 256)  # sit-s2's batch, the run's own group size


def test_reader_settings_do_not_change_the_data_digest_but_the_items_do():
    from flows.data_tasks import READER_SETTINGS, data_digest_inputs
    from groupdiff.data.config import DataConfig

    base = PipelineParams().config("baseline")

    def with_data(**update):
        return base.model_copy(update={"data": base.data.model_copy(update=update)})

    for update in ({"num_workers": 2}, {"prefetch_factor": 4}, {"cache_dir": "/elsewhere"}):
        assert data_digest_inputs(with_data(**update)) == data_digest_inputs(base), update
    assert data_digest_inputs(with_data(limit=7)) != data_digest_inputs(base)
    assert READER_SETTINGS <= set(DataConfig.model_fields)


def test_protocol_params_leave_room_for_the_floor_and_default_to_the_preset_classifier():
    with pytest.raises(ValidationError, match="reference_limit=9800 \\+ num_samples=400 exceeds the 10000 test images"):
        PipelineParams(reference_limit=9800, num_samples=400)
    params = PipelineParams()
    assert params.classifier_overrides() == {}  # the preset's classifier (all 60k images, its epochs)
    preset = params.config("baseline").embed.classifier
    assert preset.train_limit == 0 and preset.epochs == type(preset)().epochs
    assert PipelineParams(classifier_epochs=1).config("baseline").embed.classifier.epochs == 1
    from flows.params import EvaluateParams

    assert EvaluateParams().weights is None and PipelineParams().weights == "ema"


def test_score_digest_and_protocol_follow_the_bootstrap_and_the_table_shows_the_floor():
    from flows.eval_tasks import protocol_id
    from flows.pipeline import metrics_table, score_digest

    base, more = PipelineParams(), PipelineParams(fd_bootstrap=50)
    assert score_digest("s", "c", base) != score_digest("s", "c", more)
    cfg = base.config("baseline")
    assert protocol_id(cfg, 400, "c", 2000, "fd_fmnist", 200, 0.95) != protocol_id(cfg, 400, "c", 2000, "fd_fmnist", 50, 0.95)
    rows = [{"variant": "baseline", "weights": "ema", "metrics": {"fd_fmnist": 30.0, "class_agreement": 0.5},
             "floor": {"fd_fmnist": 2.5, "class_agreement": 0.93}}]
    table = metrics_table(rows, "fd_fmnist")
    assert "| baseline | ema | 0.5 | 30 |" in table and "| real-data floor | real | 0.93 | 2.5 |" in table


def test_evaluation_protocol_defaults_come_from_the_preset(tmp_path):
    """Sampler, steps and cfg are the preset's unless given: one source for run, sample and evaluate-model."""
    from importlib.resources import files

    import yaml

    from groupdiff.config import load_preset

    preset = load_preset("tiny-fmnist")
    cfg = PipelineParams().config("baseline")
    assert (cfg.sampler.method, cfg.sampler.num_steps, cfg.guidance.cfg_scale) == \
        (preset.sampler.method, preset.sampler.num_steps, preset.guidance.cfg_scale)
    assert PipelineParams().steps() == preset.train.steps
    other = yaml.safe_load((files("groupdiff") / "presets" / "tiny-fmnist.yaml").read_text())
    other["sampler"].update(method="sde-euler", num_steps=40)
    other["guidance"]["cfg_scale"] = 2.5
    other["train"]["steps"] = 77
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    cfg = PipelineParams(preset=str(path)).config("baseline")
    assert (cfg.sampler.method, cfg.sampler.num_steps, cfg.guidance.cfg_scale, cfg.train.steps) == \
        ("sde-euler", 40, 2.5, 77)
    given = PipelineParams(preset=str(path), sampler="ode-euler", sampling_steps=5, cfg_scale=1.0,
                           train_steps=9).config("baseline")
    assert (given.sampler.method, given.sampler.num_steps, given.guidance.cfg_scale, given.train.steps) == \
        ("ode-euler", 5, 1.0, 9)


def test_summary_says_when_nothing_was_promoted_whatever_else_it_shows(tmp_path):
    from flows.embedded import summary

    params = PipelineParams()
    records = {"mlflow_uri": "sqlite:///m.db", "store_root": "file:///s", "catalogue_url": "sqlite:///c.db"}
    metrics = {"fd_fmnist": 12.0, "class_agreement": 0.9}
    row = {"variant": "baseline", "metrics": metrics, "floor": {"fd_fmnist": 3.0, "class_agreement": 0.91}}
    result = {"records": records, "rows": [dict(row, decision="rejected")], "metric": "fd_fmnist", "table": "T"}
    times = [("train-baseline", 12.5)]
    for given in (None, times):
        text = summary(result, params, tmp_path, 60.0, given, [tmp_path / "grids" / "baseline.png"])
        assert "No version was promoted" in text and "Champion (" not in text
        assert ("train-baseline" in text) == (given is not None) and "grids/baseline.png" in text
    promoted = dict(result, rows=[dict(row, decision="promoted", version="1")])
    text = summary(promoted, params, tmp_path, 60.0, times)
    assert "No version was promoted" not in text and "train-baseline" in text
    assert "Champion (baseline): class_agreement 0.900 (real data 0.910), fd_fmnist 12 vs real-data floor 3 (4.0x" in text


def test_a_versions_held_out_split_is_disjoint_seeded_and_at_most_half():
    """The data space's split: reference, floor and classifier images disjoint and covering the version, the same
    for the same seed; the reference shrinks to fit half the version; a floor with no room left is refused."""
    import numpy as np

    from flows.data_tasks import data_digests
    from flows.datasets import held_out_split

    ref, floor, own = held_out_split(1000, 300, 120)
    assert (len(ref), len(floor), len(own)) == (300, 120, 580)
    assert sorted(np.concatenate([ref, floor, own]).tolist()) == list(range(1000))
    assert all((np.diff(part) > 0).all() for part in (ref, floor, own))
    assert all((a == b).all() for a, b in zip(held_out_split(1000, 300, 120), (ref, floor, own)))
    assert not (held_out_split(1000, 300, 120, seed=1)[0] == ref).all()
    ref, floor, own = held_out_split(48, 100, 12)  # a small version: half of it held out, the reference shrinks
    assert (len(ref), len(floor), len(own)) == (12, 12, 24)
    with pytest.raises(ValueError, match=r"num_samples=30 .* version of 48 images \(24; .* expected num_samples <= 23"):
        held_out_split(48, 100, 30)
    # the classifier that leaves them out is another classifier
    config = PipelineParams(data_limit=100).config("baseline")
    config = config.model_copy(update={"data": config.data.model_copy(update={"dataset": "imagefolder"})})
    assert data_digests(config, "d1", (12, 12))["classifier"] != data_digests(config, "d1", (12, 18))["classifier"]
