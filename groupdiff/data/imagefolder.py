"""ImageNet-layout folders (``root/<class>/<image>``) with the ADM centre crop, as RGB in [-1, 1].

On construction the folder is scanned once (progress bar): classes are the sorted sub-folders, images
the sorted files with an image extension. The scan reads each file's header (and, with
``skip_corrupt`` or a content digest, its bytes), so an unreadable file is reported by name up front.
Grayscale / RGBA / palette images are converted to RGB and counted per source mode.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .digest import DIGEST_CHARS, digest_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".JPEG")


def center_crop_arr(image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: halve with a box filter while >= 2x the target, bicubic resize, centre crop.

    Written out because the reference FID statistics of ADM/DiT/SiT use exactly this crop;
    torchvision's Resize+CenterCrop skips the box-filter halving and gives different pixels.
    """
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def list_image_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Sorted image files, their labels and the class names of an ImageNet-layout folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in
                       {e.lower() for e in IMAGE_EXTENSIONS})
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(
            f"image folder {root} holds no images: expected root/<class>/<image> with extensions "
            f"{sorted({e.lower() for e in IMAGE_EXTENSIONS})}, found classes {classes[:10]}"
        )
    return files, np.asarray(labels, dtype=np.int64), classes


class ImageFolderDataset(torch.utils.data.Dataset):
    """RGB images (3, S, S) in [-1, 1] with integer labels; ``digest`` names the content and transform."""

    def __init__(self, root: str | Path, image_size: int, limit: int = 0, skip_corrupt: bool = False,
                 digest_mode: str = "content"):
        if digest_mode not in ("content", "listing"):
            raise ValueError(f"digest_mode must be 'content' or 'listing', got {digest_mode!r}")
        self.root = Path(root)
        self.image_size = image_size
        files, labels, self.classes = list_image_folder(self.root)
        if limit:
            files, labels = files[:limit], labels[:limit]
        self.skipped: list[str] = []
        self.converted: dict[str, int] = {}
        keep: list[int] = []
        file_digests: list[str] = []
        for i, path in enumerate(tqdm(files, desc=f"scan {self.root.name}", unit="img")):
            data = path.read_bytes() if (skip_corrupt or digest_mode == "content") else None
            try:
                with Image.open(io.BytesIO(data) if data is not None else path) as im:
                    mode = im.mode
                    if skip_corrupt:
                        im.load()  # full decode: catches truncated files
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                if not skip_corrupt:
                    raise ValueError(
                        f"corrupt or unreadable image {path}: {exc}. Remove it or set data.skip_corrupt=true"
                    ) from exc
                self.skipped.append(str(path))
                continue
            if mode != "RGB":
                self.converted[mode] = self.converted.get(mode, 0) + 1
            keep.append(i)
            rel = str(path.relative_to(self.root))
            file_digests.append(rel + ":" + (hashlib.sha256(data).hexdigest()[:DIGEST_CHARS] if data is not None
                                             else str(path.stat().st_size)))
        if not keep:
            raise ValueError(f"image folder {self.root}: every image was unreadable ({len(self.skipped)} skipped)")
        self.files = [files[i] for i in keep]
        self.labels = labels[keep]
        self.num_classes = len(self.classes)
        self.channels = 3
        self.digest = digest_json({"kind": "imagefolder", "files": file_digests, "classes": self.classes,
                                   "image_size": image_size, "crop": "adm-center", "digest_mode": digest_mode})

    def report(self) -> dict:
        """What the scan found: counts of images, skipped files (listed) and converted colour modes."""
        return {"images": len(self.files), "skipped": len(self.skipped), "skipped_files": list(self.skipped),
                "converted": dict(self.converted)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"corrupt or unreadable image {path}: {exc}. Set data.skip_corrupt=true to skip it") from exc
        arr = np.asarray(center_crop_arr(image, self.image_size), dtype=np.float32)
        x = torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)
        return x, int(self.labels[index])
