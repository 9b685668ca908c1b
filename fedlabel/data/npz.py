"""Image datasets stored as one .npz archive in the MedMNIST layout."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from fedlabel.data.dataset import ImageDataset
from fedlabel.data.errors import DataError

KEYS = ("train_images", "train_labels", "test_images", "test_labels")
MAX_CLASSES = (
    10_000  # num_classes is the largest label + 1: a stray huge label must not size the model
)
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def read_arrays(path: Path, keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
    """The arrays named keys from the .npz archive at path (no pickles); errors name the file."""
    if not path.is_file():
        raise DataError(f"{path}: .npz file is missing")
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: not a valid .npz archive ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single array, expected an .npz archive with keys {', '.join(keys)}"
        )
    with archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing key(s) {', '.join(missing)}; found"
                f" {', '.join(archive.files) or 'none'}"
            )
        try:
            return {key: archive[key] for key in keys}
        except _READ_ERRORS as err:
            raise DataError(f"{path}: corrupt .npz archive ({err})") from err


def _images(path: Path, key: str, images: np.ndarray) -> torch.Tensor:
    """N x H x W or N x H x W x 3 -> uint8 N x C x H x W; float images in [0, 1] are scaled by
    255."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] == 3:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{path}: {key} must be N x H x W or N x H x W x 3, got shape {images.shape}"
        )
    if np.issubdtype(images.dtype, np.floating):
        if np.isnan(images).any():
            raise DataError(f"{path}: {key} contains NaN values")
        if images.size and not 0.0 <= images.min() <= images.max() <= 1.0:
            raise DataError(
                f"{path}: float {key} must lie in [0, 1], got [{images.min()}, {images.max()}]"
            )
        images = np.rint(images * 255.0).astype(np.uint8)
    elif images.dtype != np.uint8:
        raise DataError(f"{path}: {key} must be uint8 or float in [0, 1], got {images.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images))


def _labels(path: Path, key: str, labels: np.ndarray, n: int) -> torch.Tensor:
    """N or N x 1 integer labels -> int64 N."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{path}: {key} must have shape (N,) or (N, 1) (multi-label is unsupported), got"
            f" {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key} must be integers, got {labels.dtype}")
    if len(labels) != n:
        raise DataError(f"{path}: {key} has {len(labels)} entries but there are {n} images")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {key} contains negative labels (min {labels.min()})")
    if labels.size and labels.max() >= MAX_CLASSES:
        raise DataError(
            f"{path}: {key} contains label {labels.max()}; labels must be class indices below"
            f" {MAX_CLASSES}"
        )
    return torch.from_numpy(labels.astype(np.int64))


def load_npz(path: str, *, bag_key: str = "") -> ImageDataset:
    """Load train/test splits from an .npz with keys train_images, train_labels, test_images,
    test_labels.

    val_* keys are ignored; num_classes is the largest label + 1 over both splits. ``bag_key``
    names an optional integer array with one bag id per training sample (ImageDataset.train_bags).
    """
    file = Path(path).expanduser()
    arrays = read_arrays(file, KEYS + ((bag_key,) if bag_key else ()))
    tensors = {}
    for split in ("train", "test"):
        images = _images(file, f"{split}_images", arrays[f"{split}_images"])
        tensors[f"{split}_images"] = images
        tensors[f"{split}_labels"] = _labels(
            file, f"{split}_labels", arrays[f"{split}_labels"], len(images)
        )
    if bag_key:
        tensors["train_bags"] = _labels(
            file, bag_key, arrays[bag_key], len(tensors["train_images"])
        )
    num_classes = 1 + max(
        (int(t.max()) for k, t in tensors.items() if k.endswith("labels") and t.numel()), default=0
    )
    try:
        return ImageDataset(name=file.stem, num_classes=num_classes, **tensors)
    except DataError as err:
        raise DataError(f"{file}: {err}") from err
