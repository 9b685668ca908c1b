"""An image classification dataset held in memory as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedlabel.data.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """Train and test splits: images uint8 N x C x H x W (square), labels int64 N in [0,
    num_classes)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    train_bags: torch.Tensor | None = None  # optional int64 N: a user-given bag id per train sample

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise DataError(
                f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}"
            )
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            where = f"dataset {self.name!r}, {split} split"
            if (
                images.dtype != torch.uint8
                or images.dim() != 4
                or images.shape[2] != images.shape[3]
            ):
                raise DataError(
                    f"{where}: images must be uint8 N x C x H x W with H == W, "
                    f"got {images.dtype} of shape {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{where}: labels must be int64 of shape ({images.shape[0]},), "
                    f"got {labels.dtype} of shape {tuple(labels.shape)}"
                )
            if (
                labels.numel()
                and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes
            ):
                raise DataError(
                    f"{where}: labels span [{int(labels.min())}, {int(labels.max())}], "
                    f"outside [0, {self.num_classes})"
                )
        for split in ("train", "test"):
            if getattr(self, f"{split}_images").shape[0] == 0:
                raise DataError(f"dataset {self.name!r}: the {split} split is empty")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images are {tuple(self.train_images.shape[1:])} "
                f"but test images are {tuple(self.test_images.shape[1:])}"
            )
        if self.train_bags is not None and (
            self.train_bags.dtype != torch.int64 or self.train_bags.shape != self.train_labels.shape
        ):
            raise DataError(
                f"dataset {self.name!r}: train_bags must be int64 of shape"
                f" {tuple(self.train_labels.shape)}, got {self.train_bags.dtype} of shape"
                f" {tuple(self.train_bags.shape)}"
            )

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[2])
