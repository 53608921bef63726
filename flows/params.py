"""Typed parameters of the flows: pydantic models whose descriptions, bounds and enums render as Prefect UI forms.

:class:`PipelineParams` is also the ``pipeline`` settings section of ``groupdiff run``: its defaults are the
embedded-default run (step and sample counts sized for about 10 minutes on 2 CPU cores), overridable field
by field with ``--set pipeline.field=value``. Everything else (model, sampler details, classifier) comes
from the preset, overridden with ``overrides`` (``section.field=value``).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field, PrivateAttr, SerializationInfo, SerializerFunctionWrapHandler, model_serializer, model_validator,
)

from groupdiff.config import GroupDiffConfig, load_preset, parse_overrides
from groupdiff.config_base import Section
from groupdiff.data.config import IngestConfig
from groupdiff.metrics.score import ScoreConfig
from groupdiff.weights import DEFAULT_WEIGHTS, WEIGHTS_DESCRIPTION, Weights

SCORE_FIELDS = ScoreConfig.model_fields  # the score stage's defaults are the protocol's defaults
FMNIST_TEST_IMAGES = 10_000  # the built-in test split: reference + real-data floor come from it

Variant = Literal["baseline", "groupdiff-l", "groupdiff-f"]
# PipelineParams fields that default to the preset's value (field -> preset section.field)
PRESET_FIELDS = {"encoder": "embed.encoder", "grouping_mode": "mine.mode", "group_size": "train.group_size",
                 "threshold": "mine.tau", "batch_images": "train.global_batch_images", "train_steps": "train.steps"}
Encoder = Literal["pixels", "classifier", "clip", "dinov2"]
GroupingMode = Literal["similarity", "class", "random"]
Sampler = Literal["ode-euler", "ode-heun", "sde-euler"]


class EvalProtocolParams(Section):
    """How trained models are sampled and scored: shared by the pipeline and evaluate-model, so that a
    registered version is re-evaluated under exactly the protocol that promoted it."""

    sampler: Sampler | None = Field(None, description="Integrator for evaluation samples (empty = the preset's "
                                    "sampler.method; evaluate-model: the registered version's).")
    sampling_steps: int | None = Field(None, ge=1, le=10_000, description="Integration steps per sample (empty = the "
                                       "preset's sampler.num_steps; evaluate-model: the registered version's).")
    sample_batch_images: int = Field(200, ge=1, le=65_536, description="Images per sampling network batch (rounded down to whole groups; the same in every evaluation, for identical noise).")
    cfg_scale: float | None = Field(None, ge=0.0, le=50.0, description="Guidance scale used for evaluation (1 = none; "
                                    "empty = the preset's guidance.cfg_scale; evaluate-model: the registered version's).")
    num_samples: int = Field(400, ge=10, le=10_000_000, description="Generated images per evaluation (a multiple of 10 x group_size).")
    reference_limit: int = Field(2000, ge=1, le=FMNIST_TEST_IMAGES - 1, description="Reference test images for fd_fmnist (the first N "
                                 "of the 10k); the real-data floor takes num_samples held-out test images after them.")
    classifier_train_limit: int | None = Field(None, ge=0, le=10_000_000, description="Images the built-in classifier "
                                               "(evaluation features) trains on (0 = all; empty = the preset's "
                                               "embed.classifier.train_limit).")
    classifier_epochs: int | None = Field(None, ge=1, le=1000, description="Epochs of the built-in classifier (empty = "
                                          "the preset's embed.classifier.epochs).")
    fd_bootstrap: int = Field(SCORE_FIELDS["fd_bootstrap"].default, ge=0, le=100_000,
                              description="Resamples of the generated set for the fd interval the registry gate uses (0 = none: plain comparison).")
    fd_interval: float = Field(SCORE_FIELDS["fd_interval"].default, gt=0.0, lt=1.0,
                               description="Coverage of the bootstrap fd interval; a challenger must beat the champion beyond it.")
    weights: Weights = Field(DEFAULT_WEIGHTS, description=WEIGHTS_DESCRIPTION + " Sampled, scored and registered.")

    @model_validator(mode="after")
    def _check_floor_room(self) -> "EvalProtocolParams":
        if self.reference_limit + self.num_samples > FMNIST_TEST_IMAGES:
            raise ValueError(
                f"reference_limit={self.reference_limit} + num_samples={self.num_samples} exceeds the "
                f"{FMNIST_TEST_IMAGES} test images: the real-data floor needs num_samples held-out images after the reference"
            )
        return self

    def protocol_overrides(self) -> dict[str, object]:
        """Sampler and guidance settings given here; empty fields leave the preset's (or the stored config's)
        values, so each preset says which evaluation protocol it uses and a default lives in one place."""
        given = {"sampler.method": self.sampler, "sampler.num_steps": self.sampling_steps,
                 "guidance.cfg_scale": self.cfg_scale}
        return {k: v for k, v in given.items() if v is not None}

    def classifier_overrides(self) -> dict[str, int]:
        """``embed.classifier.*`` settings given here (None fields leave the preset's values)."""
        given = {"embed.classifier.train_limit": self.classifier_train_limit,
                 "embed.classifier.epochs": self.classifier_epochs}
        return {k: v for k, v in given.items() if v is not None}


class PipelineParams(EvalProtocolParams):
    """One pipeline run: embed -> mine -> train each variant -> sample -> score -> register the better."""

    preset: str = Field("tiny-fmnist", min_length=1, description="Config preset NAME (groupdiff/presets/NAME.yaml, e.g. tiny-fmnist) or a YAML path.")
    variants: list[Variant] = Field(
        default_factory=lambda: ["baseline", "groupdiff-l"], min_length=1, max_length=3,
        description="Training variants to train and compare (each becomes a registered model version).",
    )
    encoder: Encoder | None = Field(None, description="Image encoder for group mining (empty = the preset's "
                                    "embed.encoder; clip/dinov2 need local weights in the preset).")
    grouping_mode: GroupingMode | None = Field(None, description="How groups are formed: embedding similarity, same "
                                               "class, or random (empty = the preset's mine.mode).")
    group_size: int | None = Field(None, ge=2, le=16, description="Images per group N for the GroupDiff variants "
                                   "(empty = the preset's train.group_size).")
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="Cosine similarity threshold tau for a "
                                    "neighbour to count, similarity mode (empty = the preset's mine.tau).")
    data_limit: int = Field(6000, ge=0, le=10_000_000, description="Train on the first N images (0 = whole split; a "
                            "dataset version is used whole).")
    train_steps: int | None = Field(None, ge=1, le=10_000_000, description="Optimizer steps per training run "
                                    "(empty = the preset's train.steps).")
    batch_images: int | None = Field(None, ge=1, le=1_000_000, description="Images per optimizer step, a multiple "
                                     "of group_size (empty = the preset's train.global_batch_images).")
    probe_every: int = Field(0, ge=0, le=10_000_000, description="Steps between group-benefit probes of GroupDiff runs (0 = off).")
    world_size: int = Field(1, ge=1, le=1024, description="Training ranks (1 = one process; more = torchrun on this machine).")
    seed: int = Field(0, ge=0, description="Seed of training, mining and sampling.")
    threads: int = Field(
        1, ge=0, le=256,
        description="torch CPU threads per process (0 = torch default). 1 by default: this tiny model gains little "
        "from more, and OpenMP threads on a shared (busy) CPU slow down erratically, up to 10x.",
    )
    overrides: list[str] = Field(
        default_factory=list, description="Extra preset overrides 'section.field=value' (e.g. model.depth=2).",
    )
    mine_top_k: int | None = Field(None, ge=1, le=10_000, description="Candidates retrieved per anchor when mining "
                                   "(empty = 4 x group_size, at least 16: room for N - 1 neighbours above the threshold).")
    mine_on_gpu: Literal["auto", "never"] = Field("never", description="Mining index on a GPU when one is present "
                                                  "('auto') or always on the CPU ('never': the same groups on every machine).")
    mine_recall_sample: int = Field(0, ge=0, le=1_000_000, description="Queries that measure the mining index's "
                                    "recall@k against exact search (0 = skip; the embedded data is searched exactly).")
    checkpoint_every: int | None = Field(None, ge=1, le=10_000_000, description="Steps between training checkpoints "
                                         "(empty = one, at the end: the pipeline samples the last).")
    keep_checkpoints: int = Field(1, ge=1, le=1000, description="Checkpoints each training run keeps on disk (older "
                                  "ones are deleted; the pipeline needs only the last).")
    init_from: str = Field("scratch", description="'scratch' or 'pretrained:PATH' (retrain-nightly passes the champion's weights).")
    register_models: bool = Field(True, description="Register the trained models and promote the better one to 'champion'.")
    model_name: str = Field("groupdiff", min_length=1, max_length=256, description="Registered model name in MLflow.")
    metric: Literal["fd_fmnist", "fd_data", "fid"] = Field(
        "fd_fmnist", description="Score compared for promotion (lower is better): fd_fmnist on the built-in data; "
        "fd_data (the default with a dataset) in the features of a small classifier trained on the dataset version.")
    dataset: str = Field("", description="A dataset version from `groupdiff ingest`: 'name', 'name@latest' or "
                         "'name@N'; empty = the built-in data")
    _data: dict[str, Any] = PrivateAttr(default_factory=dict)  # config settings of the resolved dataset version
    _from_preset: set[str] = PrivateAttr(default_factory=set)  # fields left empty by the run, filled from its preset

    @model_serializer(mode="wrap")
    def _dump_preset_fields_empty(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):
        """Fields the run left empty are written empty again (the preset fills them at validation), so a dump -- the
        deployment's default in the UI form, a run's parameters, a copy validated again -- keeps "the preset's value"
        rather than the value of the preset it was first validated with. ``context={"resolved": True}`` dumps the
        filled values (what MLflow records)."""
        data = handler(self)
        if isinstance(data, dict) and not (info.context or {}).get("resolved"):
            data.update({name: None for name in self._from_preset if name in data})
        return data

    @model_validator(mode="after")
    def _check(self) -> "PipelineParams":
        self._fill_from_preset()
        self._check_metric()
        groups = 10 * self.group_size  # a dataset version's class count is checked once resolved (validate_configs)
        if not self.dataset and self.num_samples % groups:
            raise ValueError(f"num_samples={self.num_samples} must be a multiple of 10 classes x group_size "
                             f"{self.group_size} = {groups} (class-balanced groups)")
        if self.batch_images % self.group_size:
            raise ValueError(f"batch_images={self.batch_images} must be a multiple of group_size={self.group_size}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants {self.variants} holds a duplicate")
        return self

    def _check_metric(self) -> None:
        """fd_data goes with a dataset (its default there), fd_fmnist with the built-in data."""
        if self.dataset and self.metric == "fd_fmnist" and "metric" not in self.model_fields_set:
            object.__setattr__(self, "metric", "fd_data")
        if self.dataset and self.metric != "fd_data":
            raise ValueError(f"metric={self.metric!r} with dataset={self.dataset!r}: a dataset version is scored in "
                             "the features of a classifier trained on it; use metric='fd_data'")
        if not self.dataset and self.metric == "fd_data":
            raise ValueError("metric='fd_data' needs a dataset (pipeline.dataset); the built-in data uses fd_fmnist")

    def with_dataset(self, spec: str, settings: dict[str, Any]) -> "PipelineParams":
        """A copy pinned to the resolved dataset version ``spec`` ('name@N') whose configs take ``settings``
        (``data.*`` and the model's shape from the version; the user's ``overrides`` still win)."""
        pinned = self.model_copy(update={"dataset": spec})
        pinned._data = dict(settings)
        return pinned

    def _fill_from_preset(self) -> None:
        """Empty fields take the preset's value (``PRESET_FIELDS``), so each of these numbers has one source:
        the preset, unless the run sets it."""
        empty = [name for name in PRESET_FIELDS if getattr(self, name) is None]
        if not empty:
            return
        try:
            preset = load_preset(self.preset, list(self.overrides))
        except ValueError as exc:
            raise ValueError(f"pipeline parameters do not form a valid config: {exc}") from exc
        for name in empty:
            section, field = PRESET_FIELDS[name].split(".")
            object.__setattr__(self, name, getattr(getattr(preset, section), field))
        self._from_preset = set(empty)
        if not 2 <= self.group_size <= 16:
            raise ValueError(f"group_size: the preset's train.group_size={self.group_size} is outside [2, 16]; "
                             "set group_size")

    def config(self, variant: Variant = "baseline") -> GroupDiffConfig:
        """The full GroupDiffConfig of one variant (preset + these settings + ``overrides``)."""
        n = 1 if variant == "baseline" else self.group_size
        mode = "baseline" if variant == "baseline" else variant
        steps = self.steps()
        settings = {
            "data.limit": self.data_limit, "embed.encoder": self.encoder, "embed.seed": self.seed,
            "mine.mode": self.grouping_mode, "mine.tau": self.threshold, "mine.group_size": self.group_size,
            "mine.seed": self.seed, "mine.top_k": self.mine_top_k or max(16, self.group_size * 4),
            "mine.use_gpu": self.mine_on_gpu, "mine.recall_sample": self.mine_recall_sample,
            **self.classifier_overrides(),
            "train.variant": variant, "train.group_size": self.group_size, "train.steps": steps,
            "train.global_batch_images": self.batch_images, "train.seed": self.seed,
            "train.checkpoint_every": self.checkpoint_every or steps, "train.keep_last": self.keep_checkpoints,
            "train.num_threads": self.threads, "train.init_from": self.init_from, "train.probe_every": self.probe_every,
            **self.protocol_overrides(), "sampler.seed": self.seed,
            "guidance.mode": mode, "guidance.group_size": n, **self._data,
        }
        try:  # typed values as they are; only the user's text overrides are parsed (and win)
            return load_preset(self.preset, {**settings, **parse_overrides(self.overrides)})
        except ValueError as exc:  # name the parameters, not only the config fields
            raise ValueError(f"pipeline parameters do not form a valid config for variant {variant!r}: {exc}") from exc

    def steps(self) -> int:
        """Optimizer steps per training run: ``train_steps``, filled from the preset's ``train.steps`` when empty."""
        return self.train_steps

    def validate_configs(self) -> dict[str, GroupDiffConfig]:
        """Every variant's config, built up front so bad parameters fail before any work starts."""
        from groupdiff.train.trainer import validate

        if self.dataset and not self._data:
            raise ValueError(f"dataset={self.dataset!r} is not resolved yet: the pipeline resolves it in the catalogue "
                             "(flows.datasets.resolve_params) before building configs")
        configs = {v: self.config(v) for v in self.variants}
        for config in configs.values():
            validate(config, self.world_size)
            groups = config.model.num_classes * self.group_size
            if self.num_samples % groups:
                raise ValueError(f"num_samples={self.num_samples} must be a multiple of model.num_classes="
                                 f"{config.model.num_classes} x group_size {self.group_size} = {groups} "
                                 "(class-balanced groups)")
        return configs


class EvaluateParams(EvalProtocolParams):
    """Evaluate one registered model version under the pipeline's protocol."""

    model_name: str = Field("groupdiff", min_length=1, max_length=256, description="Registered model name.")
    version: str = Field("champion", min_length=1, description="A version number or an alias such as 'champion'.")
    seed: int = Field(0, ge=0, description="Sampling seed.")
    weights: Weights | None = Field(None, description=WEIGHTS_DESCRIPTION + " Empty = the weights the version was "
                                    "registered with (its groupdiff.weights tag; 'ema' when it has none).")


class StudyParams(Section):
    """A grid of pipeline arms: group size x grouping mode x variant, each evaluated over a cfg sweep."""

    base: PipelineParams = Field(default_factory=PipelineParams, description="Settings shared by every arm.")
    group_sizes: list[int] = Field(default_factory=lambda: [2, 4], min_length=1, max_length=8,
                                   description="Group sizes N to compare (each 2..16).")
    grouping_modes: list[GroupingMode] = Field(default_factory=lambda: ["similarity"], min_length=1, max_length=3,
                                               description="Grouping modes to compare.")
    variants: list[Variant] = Field(default_factory=lambda: ["groupdiff-l"], min_length=1, max_length=3,
                                    description="GroupDiff variants of the arms (a baseline arm is always added).")
    cfg_scales: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.5], min_length=1, max_length=16,
                                    description="Guidance scales evaluated per arm (the best differs per arm).")

    @model_validator(mode="after")
    def _check(self) -> "StudyParams":
        bad = [n for n in self.group_sizes if not 2 <= n <= 16]
        if bad:
            raise ValueError(f"group_sizes {bad} outside [2, 16]")
        bad = [s for s in self.cfg_scales if not 0.0 <= s <= 50.0]
        if bad:
            raise ValueError(f"cfg_scales {bad} outside [0, 50]")
        return self


class IngestParams(IngestConfig):
    """One ingest: where the images are, the dataset's name, and how they are stored (IngestConfig's fields)."""

    src: str = Field(..., min_length=1, description="Image folder (SRC/<class>/<image>) or a tar (.tar, .tar.gz, "
                     ".tgz) of class folders: a path on the machine the flow runs on.")
    name: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                      description="Dataset name: versions are numbered per name (letters, digits, '_', '-', '.').")
    vae: str = Field("", description="SD-VAE weights for encode='latents': a local path (diffusers folder or one "
                     ".safetensors file) or an s3:// URI of one (fetched to a temporary folder first).")

    @model_validator(mode="after")
    def _check_vae(self) -> "IngestParams":
        if self.encode == "latents" and not self.vae:
            raise ValueError("encode='latents' needs vae: the SD-VAE weights (local path or s3:// URI)")
        return self

    def ingest_config(self) -> IngestConfig:
        """The library's ingest settings."""
        return IngestConfig(**self.model_dump(include=set(IngestConfig.model_fields)))
