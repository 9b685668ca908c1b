"""A dataset split across simulated clients, each with a labeled and an unlabeled part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlabel.data.dataset import ImageDataset
from fedlabel.data.errors import DataError
from fedlabel.data.fashion_mnist import load_fashion_mnist
from fedlabel.data.npz import load_npz
from fedlabel.data.partition import partition_dirichlet, partition_iid, split_labeled


@dataclass(frozen=True)
class ClientData:
    """One client's images (uint8 N x C x H x W) and labels (int64).

    unlabeled_true_labels is the hidden ground truth of the unlabeled part, for simulation metrics
    only; None in real deployments.
    """

    client_id: int
    labeled_images: torch.Tensor
    labeled_labels: torch.Tensor
    unlabeled_images: torch.Tensor
    unlabeled_true_labels: torch.Tensor | None

    def __post_init__(self) -> None:
        if len(self.labeled_images) != len(self.labeled_labels):
            raise DataError(
                f"client {self.client_id}: {len(self.labeled_images)} labeled images but {len(self.labeled_labels)} labels"
            )
        if self.unlabeled_true_labels is not None and len(self.unlabeled_true_labels) != len(self.unlabeled_images):
            raise DataError(
                f"client {self.client_id}: {len(self.unlabeled_images)} unlabeled images but "
                f"{len(self.unlabeled_true_labels)} true labels"
            )

    @property
    def num_labeled(self) -> int:
        return len(self.labeled_labels)

    @property
    def num_unlabeled(self) -> int:
        return len(self.unlabeled_images)

    def stats(self, num_classes: int) -> dict[str, Any]:
        """Id, sizes and class histograms (unlabeled_histogram is None without true labels)."""

        def histogram(labels: torch.Tensor | None) -> list[int] | None:
            return None if labels is None else torch.bincount(labels, minlength=num_classes).tolist()

        return {
            "client_id": self.client_id,
            "num_labeled": self.num_labeled,
            "num_unlabeled": self.num_unlabeled,
            "labeled_histogram": histogram(self.labeled_labels),
            "unlabeled_histogram": histogram(self.unlabeled_true_labels),
        }


@dataclass(frozen=True)
class FederatedData:
    """All clients plus the central test set."""

    clients: list[ClientData]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int

    def client_stats(self) -> list[dict[str, Any]]:
        """Per client: id, sizes and class histograms (unlabeled_histogram is None without true labels)."""
        return [c.stats(self.num_classes) for c in self.clients]


def load_images(*, name: str, root: str, cache_dir: str, download: bool) -> ImageDataset:
    """Load "fashion_mnist" (root = directory or "") or "npz" (root = path of the .npz file)."""
    if name == "fashion_mnist":
        return load_fashion_mnist(root=root, cache_dir=cache_dir, download=download)
    if name == "npz":
        if not root:
            raise DataError("data.name=npz needs data.root set to the path of the .npz file")
        return load_npz(root)
    raise DataError(f"unknown dataset {name!r}; choose fashion_mnist or npz")


def build_federated(
    dataset: ImageDataset,
    *,
    num_clients: int,
    partition: str,
    alpha: float,
    min_client_size: int,
    label_ratio: float,
    labeled_class_alpha: float,
    seed: int,
    train_samples: int = 0,
) -> FederatedData:
    """Partition the train split over clients ("iid" or "dirichlet"), then split each client into labeled/unlabeled.

    Deterministic in seed; the labeled split uses its own generator, so the partition depends on
    seed and the partition knobs only. ``train_samples`` > 0 first keeps a seeded random subset of
    that many training samples (for quick runs and tests).
    """
    seed_seq = np.random.SeedSequence([seed, 17])
    partition_rng = np.random.default_rng(seed_seq)
    label_rng = np.random.default_rng(seed_seq.spawn(1)[0])
    labels = dataset.train_labels.numpy()
    pool = np.arange(len(labels))
    if 0 < train_samples < len(labels):
        pool = np.sort(np.random.default_rng(np.random.SeedSequence([seed, 18])).choice(len(labels), train_samples, replace=False))
    if num_clients > len(pool):
        raise DataError(f"dataset {dataset.name!r}: {len(pool)} training samples cannot be split over data.num_clients={num_clients}")
    if partition == "iid":
        parts = partition_iid(len(pool), num_clients=num_clients, rng=partition_rng)
    elif partition == "dirichlet":
        try:
            parts = partition_dirichlet(
                labels[pool], num_clients=num_clients, alpha=alpha, min_client_size=min_client_size, rng=partition_rng
            )
        except ValueError as err:
            raise DataError(f"dataset {dataset.name!r}: {err}") from err
    else:
        raise ValueError(f"unknown partition {partition!r}; choose iid or dirichlet")
    clients = []
    for client_id, part in enumerate(parts):
        labeled, unlabeled = split_labeled(
            pool[part], labels, label_ratio=label_ratio, rng=label_rng, labeled_class_alpha=labeled_class_alpha
        )
        labeled_t, unlabeled_t = torch.from_numpy(labeled), torch.from_numpy(unlabeled)
        clients.append(
            ClientData(
                client_id=client_id,
                labeled_images=dataset.train_images[labeled_t],
                labeled_labels=dataset.train_labels[labeled_t],
                unlabeled_images=dataset.train_images[unlabeled_t],
                unlabeled_true_labels=dataset.train_labels[unlabeled_t],
            )
        )
    return FederatedData(
        clients=clients,
        test_images=dataset.test_images,
        test_labels=dataset.test_labels,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
    )
