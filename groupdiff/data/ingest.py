"""``groupdiff ingest``, the library half: an image folder (or a tar of class folders) -> a shard version folder.

Every file under a class folder is decoded in full first; a corrupt or non-image file is reported by its path
(policy ``skip``: left out and listed in the report and the manifest; ``fail``: an error naming every such file,
before anything is written). The images are centre-cropped (ADM crop, as :mod:`groupdiff.data.imagefolder`)
and stored as uint8 pixels, or encoded with the SD-VAE into latents (``mean * scaling_factor``). The output
folder is complete only when its ``dataset.json`` exists (written last). Publishing it to the object store
and recording the version in the catalogue is the platform's half (``registry.datasets``, ``flows.ingest``).
"""
from __future__ import annotations

import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypedDict

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .config import IngestConfig, VaeConfig
from .imagefolder import center_crop_arr
from .sharded import MANIFEST, ShardManifest, ShardWriter

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class IngestReport(TypedDict):
    """What ``ingest_images`` wrote: the version folder, its digest and counts, and the files left out."""

    out: str
    digest: str
    kind: str
    num_items: int
    classes: list[str]
    counts: dict[str, int]
    corrupt: list[str]
    item_shape: list[int]


@contextmanager
def source_folder(src: str | Path) -> Iterator[Path]:
    """The class folders of ``src``: the folder itself, or a tar (.tar, .tar.gz, .tgz) extracted to a temporary
    folder with tarfile's ``data`` filter (no absolute paths, links out of the tree or device files)."""
    src = Path(src)
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise FileNotFoundError(f"ingest source {src} does not exist; expected an image folder (root/<class>/<image>) "
                                "or a tar of class folders")
    if not tarfile.is_tarfile(src):
        raise ValueError(f"ingest source {src} is neither a folder nor a tar archive")
    with tempfile.TemporaryDirectory(prefix="groupdiff-ingest-") as tmp:
        with tarfile.open(src) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp)
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
            root = entries[0]  # a tar of one top folder holding the class folders
        yield root


def scan_class_folders(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every file under ``root/<class>/`` (any extension: non-images are reported, not ignored), sorted."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"ingest source {root} holds no class folders; expected root/<class>/<image>")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"ingest source {root}: the class folders {classes[:10]} hold no files")
    return files, np.asarray(labels, dtype=np.int64), classes


class _Decoded(torch.utils.data.Dataset):
    """Decode + crop each file to uint8 (3, S, S); a file that cannot be decoded yields ``None``."""

    def __init__(self, files: list[Path], image_size: int):
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.files[index]) as im:
                im.load()  # full decode: catches truncated files
                image = im.convert("RGB")
        except _DECODE_ERRORS:
            return index, None
        return index, np.asarray(center_crop_arr(image, self.image_size), dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_all(files: list[Path], config: IngestConfig) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(file index, uint8 (3, S, S) or None)`` for every file in order (DataLoader workers decode)."""
    loader = torch.utils.data.DataLoader(_Decoded(files, config.image_size), batch_size=None, shuffle=False,
                                         num_workers=config.num_workers, collate_fn=lambda item: item)
    yield from tqdm(loader, total=len(files), desc="ingest: decode", unit="img")


def find_corrupt(files: list[Path], config: IngestConfig, root: Path) -> list[str]:
    """Relative paths of the files that do not decode as images (a first pass, so ``fail`` writes nothing)."""
    return [str(files[i].relative_to(root)) for i, image in decode_all(files, config) if image is None]


def ingest_images(src: str | Path, out_dir: str | Path, config: IngestConfig, vae_config: VaeConfig | None = None,
                  vae=None, vae_digest: str | None = None) -> IngestReport:
    """Validate, preprocess (and optionally VAE-encode) the images of ``src`` into the version folder ``out_dir``.

    ``out_dir`` must not hold a version already. With ``config.encode == 'latents'`` the VAE is ``vae`` or built
    from ``vae_config`` (local weights, :func:`groupdiff.data.latents.build_vae`) before anything is written.
    """
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a dataset version ({MANIFEST}); use an empty folder")
    if config.encode == "latents" and vae is None:
        from .latents import build_vae

        if vae_config is None:
            raise ValueError("ingest encode='latents' needs data.vae (the SD-VAE weights)")
        vae, vae_digest = build_vae(vae_config, "cpu" if vae_config.device == "auto" else vae_config.device)
    with source_folder(src) as root:
        files, labels, classes = scan_class_folders(root)
        corrupt = find_corrupt(files, config, root)
        if corrupt and config.on_corrupt == "fail":
            raise ValueError(f"ingest source {src}: {len(corrupt)} corrupt or non-image files: {corrupt[:20]}"
                             f"{' ...' if len(corrupt) > 20 else ''}; remove them or set on_corrupt='skip'")
        if len(corrupt) == len(files):
            raise ValueError(f"ingest source {src}: none of its {len(files)} files is a readable image")
        manifest = _write(files, labels, classes, config, out, vae, vae_config, vae_digest,
                          source={"path": str(src), "files": len(files), "corrupt": corrupt})
    return IngestReport(out=str(out), digest=manifest.digest, kind=manifest.kind, num_items=manifest.num_items,
                        classes=classes, counts=manifest.counts(np.load(out / "labels.npy")), corrupt=corrupt,
                        item_shape=manifest.item_shape)


def _write(files, labels, classes, config: IngestConfig, out: Path, vae, vae_config: VaeConfig | None,
           vae_digest: str | None, source: dict[str, Any]) -> ShardManifest:
    """Second pass: decode the good files again (nothing is held in memory) and write shards of rows."""
    s = config.image_size
    preprocess: dict[str, Any] = {"image_size": s, "crop": "adm-center"}
    encoder = None
    if config.encode == "latents":
        from .latents import LatentEncoder

        encoder = LatentEncoder(vae, vae_config)
        preprocess.update(encoder.describe(vae_digest))
    shape = (3, s, s) if encoder is None else encoder.latent_shape(s)
    writer = ShardWriter(out, config.encode, shape, classes, config.shard_size)
    batch = vae_config.batch_size if vae_config is not None else 256
    rows, ys = [], []
    for index, image in decode_all(files, config):
        if image is None:
            continue
        rows.append(image)
        ys.append(labels[index])
        if len(rows) == batch:
            writer.add(_rows(rows, encoder), np.asarray(ys))
            rows, ys = [], []
    if rows:
        writer.add(_rows(rows, encoder), np.asarray(ys))
    return writer.close(source, preprocess)


def _rows(images: list[np.ndarray], encoder) -> np.ndarray:
    pixels = np.stack(images)
    return pixels if encoder is None else encoder.encode_uint8(pixels)


def remove_partial(out_dir: str | Path) -> None:
    """Delete an unfinished version folder (no manifest): what a failed ingest leaves."""
    out = Path(out_dir)
    if out.is_dir() and not (out / MANIFEST).exists():
        shutil.rmtree(out, ignore_errors=True)
