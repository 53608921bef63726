"""InceptionV3 features for FID / sFID / IS / precision-recall in one pass, via torch-fidelity's port.

torch-fidelity's ``FeatureExtractorInceptionV3`` reproduces the TensorFlow FID graph (``pt_inception-
2015-12-05`` weights converted to PyTorch, TF1-compatible bilinear resize to 299x299, TF average-pool
padding). One forward pass gives, per image:

- ``pool``    (2048,)  pool3 features: FID and precision/recall (ADM ``pool_3:0``);
- ``logits``  (1008,)  unbiased logits (``pool3 @ W``, no bias, as the original IS code): Inception score;
- ``spatial`` (2023,)  sFID features: the first 7 channels of TF ``mixed_6/conv:0``, i.e. the 1x1 branch
  output of the fourth 17x17 block (``Mixed_6d.branch1x1`` in the torchvision naming), flattened in the
  TF HWC order (17*17*7 = 2023), exactly as the ADM evaluator slices it. Captured with a forward hook.

Weights: a local path or ``file://`` URI to the torch-fidelity weights file
(``weights-inception-2015-12-05-6726825d.pth``). Nothing is downloaded: a missing file is an error
saying where to put it. The file is read with ``torch.load(weights_only=True)`` (tensors only).

Input images: uint8, NHWC or NCHW, 1 or 3 channels (grey images are repeated to RGB), any size
(resized to 299x299 inside the network, as the TF graph does for the ADM evaluator).

Arithmetic: full float32 (TF32 convolutions/matmuls are switched off for the pass, see
:func:`full_fp32`); on CPU the network runs in channels-last memory format (faster oneDNN kernels,
features equal to the default layout's up to float summation order, ~1e-5 relative).
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm import tqdm

WEIGHTS_ENV = "GROUPDIFF_INCEPTION_WEIGHTS"
WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
SPATIAL_CHANNELS = 7  # ADM evaluator: spatial[..., :7]
SPATIAL_LAYER = "Mixed_6d.branch1x1"  # TF mixed_6/conv
FEATURES = ("pool", "spatial", "logits")


def resolve_weights_path(path_or_uri: str | os.PathLike | None) -> Path:
    """Local path of the Inception weights from a path, ``file://`` URI or ``$GROUPDIFF_INCEPTION_WEIGHTS``."""
    value = str(path_or_uri) if path_or_uri else os.environ.get(WEIGHTS_ENV, "")
    if not value:
        raise FileNotFoundError(
            "no InceptionV3 weights given. Put torch-fidelity's FID weights file "
            f"({WEIGHTS_FILENAME}, the converted pt_inception-2015-12-05) on this machine and pass its path "
            f"(--inception-weights PATH) or set ${WEIGHTS_ENV}; object-store URIs are fetched by flows/ first"
        )
    parsed = urlparse(value)
    if parsed.scheme == "file":
        value = parsed.path
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(
            f"InceptionV3 weights URI {value!r}: only local paths and file:// URIs are read here; "
            "fetch s3:// objects to a local path first (flows/ does this)"
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"InceptionV3 weights {str(path)!r} not found. Put torch-fidelity's FID weights file "
            f"({WEIGHTS_FILENAME}, converted from pt_inception-2015-12-05) there, or pass another path "
            f"with --inception-weights / ${WEIGHTS_ENV}"
        )
    return path


def _fidelity_class():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


class InceptionFeatures:
    """Callable ``images (uint8) -> {"pool", "spatial", "logits"}`` numpy arrays, one network pass."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64):
        path = resolve_weights_path(weights)
        raw = path.read_bytes()
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the path and what was expected
            raise ValueError(f"InceptionV3 weights {str(path)!r} are not a tensors-only state dict: {exc}") from exc
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise ValueError(f"InceptionV3 weights {str(path)!r} do not hold the FID InceptionV3 state dict (no 'fc.weight')")
        buffer = io.BytesIO()
        torch.save(state, buffer)  # hand torch-fidelity the validated tensors, not the file
        buffer.seek(0)
        self.net = _fidelity_class()(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer
        ).to(device)
        if torch.device(device).type == "cpu":
            # channels_last: oneDNN's NHWC convolutions, about 1.4x faster on CPU (bench/sample.py); the same
            # arithmetic up to float summation order (tests compare with the library's own NCHW output)
            self.net = self.net.to(memory_format=torch.channels_last)
        self.device = device
        self.batch_size = batch_size
        self._spatial: torch.Tensor | None = None
        self.net.get_submodule(SPATIAL_LAYER).register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output) -> None:
        # (B, 192, 17, 17) -> first 7 channels in TF's NHWC order -> (B, 17*17*7)
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1).float()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, progress: bool = False) -> dict[str, np.ndarray]:
        batches = to_nchw_uint8(images)
        out: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
        starts = range(0, batches.shape[0], self.batch_size)
        with full_fp32():
            self._extract(batches, starts, out, progress)
        return {name: np.concatenate(chunks).astype(np.float64) for name, chunks in out.items()}

    def _extract(self, batches: np.ndarray, starts: range, out: dict[str, list[np.ndarray]], progress: bool) -> None:
        for start in tqdm(starts, desc="inception", disable=not progress, unit="batch"):
            x = torch.from_numpy(batches[start : start + self.batch_size]).to(self.device)
            pool, logits = self.net(x)
            out["pool"].append(pool.cpu().numpy())
            out["logits"].append(logits.cpu().numpy())
            out["spatial"].append(self._spatial.cpu().numpy())


@contextmanager
def full_fp32():
    """Disable TF32 for convolutions and matmuls (restored afterwards).

    PyTorch lets cuDNN run float32 convolutions in TF32 by default on Ampere and newer GPUs (10-bit
    mantissa): Inception features, hence FID, would then depend on the GPU generation. No effect on CPU.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def to_nchw_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC or NCHW images with 1 or 3 channels -> uint8 (N, 3, H, W); anything else is an error."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got dtype {arr.dtype}")
    if arr.ndim != 4:
        raise ValueError(f"images must be a 4-D batch (N, H, W, C) or (N, C, H, W), got shape {arr.shape}")
    if arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (NHWC or NCHW), got shape {arr.shape}")
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return np.ascontiguousarray(arr)


def random_inception_extractor(seed: int = 0) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 with a seeded random initialisation instead of the FID weights.

    For tests and benchmarks only: the real weights cannot be fetched here, and a state dict saved from
    this network exercises exactly the weights-file path of :func:`resolve_weights_path` and the extractor.
    """
    base = _fidelity_class()

    class RandomInit(base):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return torch.nn.Module.load_state_dict(self, state_dict, strict=False)

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(seed)
    return RandomInit("random", ["2048"], feature_extractor_weights_path=empty)
