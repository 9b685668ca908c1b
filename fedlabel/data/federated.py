"""A dataset split across simulated clients, each with a labeled and an unlabeled part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlabel.data.bags import (
    Bags,
    BagSpec,
    InstanceLabelsUnavailable,
    given_bag_index,
    make_bags,
    random_bag_index,
)
from fedlabel.data.dataset import ImageDataset
from fedlabel.data.errors import DataError
from fedlabel.data.fashion_mnist import load_fashion_mnist
from fedlabel.data.label_dp import os_entropy_rng
from fedlabel.data.npz import load_npz
from fedlabel.data.partition import (
    partition_dirichlet,
    partition_iid,
    split_labeled,
    split_validation,
)


@dataclass(frozen=True, init=False, eq=False)
class ClientData:
    """One client's images (uint8 N x C x H x W) and labels (int64).

    The labeled part holds either instance labels (``labeled_labels``) or, for a bagged client,
    only :class:`Bags` with per-bag class counts: a bagged ClientData is built without instance
    labels and ``labeled_labels`` raises :class:`InstanceLabelsUnavailable`, so training code
    cannot use them. unlabeled_true_labels is the hidden ground truth of the unlabeled part, for
    simulation metrics only; None in real deployments.
    """

    client_id: int
    labeled_images: torch.Tensor
    unlabeled_images: torch.Tensor
    unlabeled_true_labels: torch.Tensor | None
    bags: Bags | None
    _instance_labels: torch.Tensor | None

    def __init__(
        self,
        client_id: int,
        labeled_images: torch.Tensor,
        labeled_labels: torch.Tensor | None,
        unlabeled_images: torch.Tensor,
        unlabeled_true_labels: torch.Tensor | None,
        bags: Bags | None = None,
    ) -> None:
        if (labeled_labels is None) == (bags is None):
            raise DataError(
                f"client {client_id}: give either labeled_labels or bags (a bagged client holds no"
                " instance labels)"
            )
        if bags is not None and bags.images is not labeled_images:
            raise DataError(
                f"client {client_id}: a bagged client's labeled_images must be its bags' images"
            )
        for name, value in (
            ("client_id", client_id),
            ("labeled_images", labeled_images),
            ("unlabeled_images", unlabeled_images),
            ("unlabeled_true_labels", unlabeled_true_labels),
            ("bags", bags),
            ("_instance_labels", labeled_labels),
        ):
            object.__setattr__(self, name, value)
        if labeled_labels is not None and len(self.labeled_images) != len(labeled_labels):
            raise DataError(
                f"client {self.client_id}: {len(self.labeled_images)} labeled images but"
                f" {len(labeled_labels)} labels"
            )
        if self.unlabeled_true_labels is not None and len(self.unlabeled_true_labels) != len(
            self.unlabeled_images
        ):
            raise DataError(
                f"client {self.client_id}: {len(self.unlabeled_images)} unlabeled images but "
                f"{len(self.unlabeled_true_labels)} true labels"
            )

    @classmethod
    def bagged(
        cls,
        client_id: int,
        bags: Bags,
        unlabeled_images: torch.Tensor,
        unlabeled_true_labels: torch.Tensor | None,
    ) -> ClientData:
        """A client whose labeled part is ``bags`` (no instance labels anywhere in the object)."""
        return cls(client_id, bags.images, None, unlabeled_images, unlabeled_true_labels, bags=bags)

    @property
    def labeled_labels(self) -> torch.Tensor:
        """Instance labels of the labeled part; raises for a bagged client."""
        if self.bags is not None:
            raise InstanceLabelsUnavailable(
                f"client {self.client_id}: its labeled part is {self.bags.num_bags} bags"
                " (data.bag_size / data.bag_key) that keep only class counts; instance labels do"
                " not exist here (use its .bags)"
            )
        return self._instance_labels

    @property
    def num_labeled(self) -> int:
        return len(self.labeled_images)

    @property
    def num_unlabeled(self) -> int:
        return len(self.unlabeled_images)

    def stats(self, num_classes: int) -> dict[str, Any]:
        """Id, sizes and class histograms (unlabeled_histogram is None without true labels; a
        bagged client's labeled_histogram is the sum of its released, possibly noisy, bag counts).
        """

        def histogram(labels: torch.Tensor | None) -> list[int] | None:
            return (
                None if labels is None else torch.bincount(labels, minlength=num_classes).tolist()
            )

        stats = {
            "client_id": self.client_id,
            "num_labeled": self.num_labeled,
            "num_unlabeled": self.num_unlabeled,
            "labeled_histogram": histogram(self._instance_labels),
            "unlabeled_histogram": histogram(self.unlabeled_true_labels),
        }
        if self.bags is not None:
            total = self.bags.counts.sum(dim=0)
            exact = self.bags.epsilon == 0
            stats["labeled_histogram"] = (
                total.long().tolist() if exact else [round(float(v), 3) for v in total]
            )
            stats["num_bags"] = self.bags.num_bags
        return stats


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
        """Per client: id, sizes and class histograms (unlabeled_histogram is None without true
        labels)."""
        return [c.stats(self.num_classes) for c in self.clients]


def load_images(
    *, name: str, root: str, cache_dir: str, download: bool, bag_key: str = ""
) -> ImageDataset:
    """Load "fashion_mnist" (root = directory or "") or "npz" (root = path of the .npz file;
    bag_key = name of its per-sample bag id array, if any)."""
    if name == "fashion_mnist":
        return load_fashion_mnist(root=root, cache_dir=cache_dir, download=download)
    if name == "npz":
        if not root:
            raise DataError("data.name=npz needs data.root set to the path of the .npz file")
        return load_npz(root, bag_key=bag_key)
    raise DataError(f"unknown dataset {name!r}; choose fashion_mnist or npz")


def training_pool(
    labels: np.ndarray, *, seed: int, train_samples: int = 0, val_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(the clients' pool, the validation set): sorted indices into the training split.

    ``train_samples`` > 0 first keeps a seeded random subset of that many samples (for quick runs
    and tests); ``val_fraction`` > 0 then holds a seeded, class-stratified share of what is left
    out of the pool (:func:`~fedlabel.data.partition.split_validation`), before any client is
    formed, so no client ever holds a validation sample. The validation draw has its own
    generator: with val_fraction=0 the pool, and every draw after it, are what they are without
    a validation split."""
    pool = np.arange(len(labels))
    if 0 < train_samples < len(labels):
        pool = np.sort(
            np.random.default_rng(np.random.SeedSequence([seed, 18])).choice(
                len(labels), train_samples, replace=False
            )
        )
    if val_fraction == 0:
        return pool, pool[:0]
    val_rng = np.random.default_rng(np.random.SeedSequence([seed, 20]))
    val, rest = split_validation(labels[pool], fraction=val_fraction, rng=val_rng)
    return pool[rest], pool[val]


def validation_set(
    dataset: ImageDataset, *, seed: int, train_samples: int = 0, val_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) that :func:`build_federated` with the same arguments holds out of the
    training split for central validation (empty with val_fraction=0)."""
    _, val = training_pool(
        dataset.train_labels.numpy(),
        seed=seed,
        train_samples=train_samples,
        val_fraction=val_fraction,
    )
    index = torch.from_numpy(val)
    return dataset.train_images[index], dataset.train_labels[index]


def evaluation_test_set(
    dataset: ImageDataset, *, seed: int, test_samples: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) evaluated centrally: the whole test split, or with ``test_samples``
    > 0 a seeded, class-stratified subset of that many (in the split's order)."""
    labels = dataset.test_labels
    if not 0 < test_samples < len(labels):
        return dataset.test_images, labels
    rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    keep, _ = split_validation(labels.numpy(), fraction=test_samples / len(labels), rng=rng)
    index = torch.from_numpy(keep)
    return dataset.test_images[index], labels[index]


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
    val_fraction: float = 0.0,
    bags: BagSpec | None = None,
) -> FederatedData:
    """Partition the train split over clients ("iid" or "dirichlet"), then split each client into
    labeled/unlabeled.

    Deterministic in seed; the labeled split uses its own generator, so the partition depends on
    seed and the partition knobs only. The clients share :func:`training_pool`'s pool:
    ``train_samples`` > 0 keeps a seeded subset, ``val_fraction`` > 0 holds the validation set
    (:func:`validation_set`) out of it. ``bags`` turns every client's labeled
    part into bags that keep only (possibly noisy) class counts, drawn from a third generator
    (the count noise from the OS's entropy instead with ``bags.secure_noise``).
    """
    seed_seq = np.random.SeedSequence([seed, 17])
    partition_rng = np.random.default_rng(seed_seq)
    label_rng = np.random.default_rng(seed_seq.spawn(1)[0])
    bag_rng = np.random.default_rng(np.random.SeedSequence([seed, 19]))
    noise_rng = os_entropy_rng() if bags is not None and bags.secure_noise else bag_rng
    if bags is not None and bags.size == 0 and dataset.train_bags is None:
        raise DataError(
            f"dataset {dataset.name!r} has no per-sample bag ids (data.bag_key); set data.bag_size"
            " > 0 for random bags"
        )
    labels = dataset.train_labels.numpy()
    pool, _ = training_pool(
        labels, seed=seed, train_samples=train_samples, val_fraction=val_fraction
    )
    if num_clients > len(pool):
        raise DataError(
            f"dataset {dataset.name!r}: {len(pool)} training samples cannot be split over"
            f" data.num_clients={num_clients}"
        )
    if partition == "iid":
        parts = partition_iid(len(pool), num_clients=num_clients, rng=partition_rng)
    elif partition == "dirichlet":
        try:
            parts = partition_dirichlet(
                labels[pool],
                num_clients=num_clients,
                alpha=alpha,
                min_client_size=min_client_size,
                rng=partition_rng,
            )
        except ValueError as err:
            raise DataError(f"dataset {dataset.name!r}: {err}") from err
    else:
        raise ValueError(f"unknown partition {partition!r}; choose iid or dirichlet")
    clients = []
    for client_id, part in enumerate(parts):
        labeled, unlabeled = split_labeled(
            pool[part],
            labels,
            label_ratio=label_ratio,
            rng=label_rng,
            labeled_class_alpha=labeled_class_alpha,
        )
        labeled_t, unlabeled_t = torch.from_numpy(labeled), torch.from_numpy(unlabeled)
        labeled_images, labeled_labels = (
            dataset.train_images[labeled_t],
            dataset.train_labels[labeled_t],
        )
        unlabeled = (dataset.train_images[unlabeled_t], dataset.train_labels[unlabeled_t])
        if bags is None:
            clients.append(ClientData(client_id, labeled_images, labeled_labels, *unlabeled))
            continue
        if bags.size:
            bag_index = random_bag_index(len(labeled), bag_size=bags.size, rng=bag_rng)
        else:
            bag_index = given_bag_index(dataset.train_bags[labeled_t].numpy())
        client_bags = make_bags(
            labeled_images,
            labeled_labels,
            bag_index,
            num_classes=dataset.num_classes,
            mechanism=bags.mechanism,
            epsilon=bags.epsilon,
            delta=bags.delta,
            rng=noise_rng,
            method=bags.method,
            bp=bags.bp,
        )
        clients.append(ClientData.bagged(client_id, client_bags, *unlabeled))
    return FederatedData(
        clients=clients,
        test_images=dataset.test_images,
        test_labels=dataset.test_labels,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
    )
