"""One real site's data on disk: the format a site operator produces from its own data.

A site directory holds

  labeled.npz     x: uint8 images, N x H x W (one channel) or N x C x H x W, H == W
                  y: integer labels, shape (N,), in [0, num_classes)
  unlabeled.npz   x: uint8 images of the same C x H x W (optional: no file = no unlabeled data)

Any other file is ignored (reserved for further data types, e.g. bags with label proportions
only). Everything is checked on load against what the federation's model expects (channels,
image size, number of classes, all sent by the server); an error names the file and the problem.

A site holds no validation split: everything in its files trains. The server holds the validation
set (data.val_fraction) as it holds the test set, from its own data file (server/server_app.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedlabel.data.errors import DataError
from fedlabel.data.federated import ClientData
from fedlabel.data.npz import read_arrays

LABELED = "labeled.npz"
UNLABELED = "unlabeled.npz"


def _images(path: Path, x: np.ndarray, *, in_channels: int, image_size: int) -> torch.Tensor:
    """uint8 N x H x W or N x C x H x W -> uint8 N x C x H x W, checked against the model's
    input."""
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x must be uint8 (pixel values 0..255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: x must be N x H x W or N x C x H x W, got shape {x.shape}")
    if x.shape[1] != in_channels:
        raise DataError(
            f"{path}: x has {x.shape[1]} channel(s) (shape {x.shape}, read as N x C x H x W) "
            f"but the model and test set have {in_channels}"
        )
    if x.shape[2:] != (image_size, image_size):
        raise DataError(
            f"{path}: images are {x.shape[2]} x {x.shape[3]} but the model and test set use"
            f" {image_size} x {image_size}"
        )
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(path: Path, y: np.ndarray, *, n: int, num_classes: int) -> torch.Tensor:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class labels, got {y.dtype}")
    if y.shape != (n,):
        raise DataError(f"{path}: y must have shape ({n},) (one label per image), got {y.shape}")
    if n and not 0 <= y.min() <= y.max() < num_classes:
        raise DataError(
            f"{path}: labels span [{y.min()}, {y.max()}], outside [0, {num_classes}) of the model's"
            f" {num_classes} classes"
        )
    return torch.from_numpy(y.astype(np.int64))


def load_site(
    site_dir: str | Path, *, in_channels: int, image_size: int, num_classes: int, client_id: int = 0
) -> ClientData:
    """Read and validate a site directory (see the module docstring) into a ClientData.

    Unlabeled samples carry no true labels (``unlabeled_true_labels`` is None)."""
    root = Path(site_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: site directory is missing (set the SuperNode's node config site-dir)"
        )
    labeled_path = root / LABELED
    if not labeled_path.is_file():
        raise DataError(f"{labeled_path}: file is missing; a site needs labeled.npz with x and y")
    labeled = read_arrays(labeled_path, ("x", "y"))
    x = _images(labeled_path, labeled["x"], in_channels=in_channels, image_size=image_size)
    if len(x) == 0:
        raise DataError(f"{labeled_path}: holds no labeled images")
    y = _labels(labeled_path, labeled["y"], n=len(x), num_classes=num_classes)
    unlabeled_path = root / UNLABELED
    if unlabeled_path.is_file():
        u = _images(
            unlabeled_path,
            read_arrays(unlabeled_path, ("x",))["x"],
            in_channels=in_channels,
            image_size=image_size,
        )
    else:
        u = torch.empty((0, in_channels, image_size, image_size), dtype=torch.uint8)
    return ClientData(
        client_id=client_id,
        labeled_images=x,
        labeled_labels=y,
        unlabeled_images=u,
        unlabeled_true_labels=None,
    )


def save_site(
    site_dir: str | Path, *, labeled_images, labeled_labels, unlabeled_images=None
) -> Path:
    """Write arrays (numpy or torch, kept as they are) as a site directory in the format above."""
    root = Path(site_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / LABELED, x=np.asarray(labeled_images), y=np.asarray(labeled_labels))
    if unlabeled_images is not None:
        np.savez(root / UNLABELED, x=np.asarray(unlabeled_images))
    return root
