"""Bags: a client's labeled images grouped into bags that keep only class counts.

A :class:`Bags` holds the images, the bag of each image and each bag's released class counts
(exact, or noisy under label-DP), never instance labels: :func:`make_bags` consumes the labels
and returns an object that has none, so training code given bags cannot read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedlabel.data import label_dp
from fedlabel.data.errors import DataError

LLP_METHODS = ("dllp", "bp")


class InstanceLabelsUnavailable(DataError):
    """Raised when code asks a bagged client for its instance labels."""


@dataclass(frozen=True)
class BpParams:
    """Settings of the bp method's belief propagation (data.bp_*; :mod:`fedlabel.llp.bp`)."""

    neighbors: int = 5
    lambda_similarity: float = 10.0
    lambda_bag: float = 10.0
    iterations: int = 100
    damping: float = 0.5
    bag_loss_weight: float = 0.0  # > 0: plus this x the DLLP loss (paper: 0.1, optional)


@dataclass(frozen=True, eq=False)
class Bags:
    """Images (uint8 N x C x H x W), bag_index (int64 N, bag of each image, every bag non-empty),
    counts (float64 B x C, the released class counts per bag).

    ``epsilon`` is the label-DP epsilon the counts were released with (0.0 = exact counts, no
    privacy), ``mechanism`` and ``noise_scale`` the noise that gives it. ``method`` (dllp | bp)
    and ``bp`` say how the supervised branch learns from the bags; they travel with the data so
    that every engine and the Flower ClientApp train the same way."""

    images: torch.Tensor
    bag_index: torch.Tensor
    counts: torch.Tensor
    epsilon: float = 0.0
    mechanism: str = ""
    noise_scale: float = 0.0
    method: str = "dllp"
    bp: BpParams = field(default_factory=BpParams)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.bag_index.dtype != torch.int64 or self.bag_index.shape != (n,):
            raise DataError(
                f"bags: bag_index must be int64 of shape ({n},), got {self.bag_index.dtype}"
                f" {tuple(self.bag_index.shape)}"
            )
        if self.counts.dim() != 2:
            raise DataError(
                f"bags: counts must be num_bags x num_classes, got shape {tuple(self.counts.shape)}"
            )
        if n and (int(self.bag_index.min()) < 0 or int(self.bag_index.max()) >= len(self.counts)):
            raise DataError(f"bags: bag_index outside [0, {len(self.counts)})")
        if bool((self.sizes == 0).any()):
            raise DataError("bags: every bag must hold at least one image")
        if self.method not in LLP_METHODS:
            raise DataError(
                f"bags: unknown LLP method {self.method!r}; choose from {list(LLP_METHODS)}"
            )

    @property
    def num_bags(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[1])

    @property
    def sizes(self) -> torch.Tensor:
        """Images per bag (int64 B); public, since bag membership is."""
        return torch.bincount(self.bag_index, minlength=len(self.counts))

    def proportions(self) -> torch.Tensor:
        """Class proportions per bag (float32 B x C): released counts clipped at 0 and normalised;
        a bag whose clipped counts are all 0 gets the uniform distribution (post-processing)."""
        clipped = self.counts.clamp_min(0.0)
        total = clipped.sum(dim=1, keepdim=True)
        uniform = torch.full_like(clipped, 1.0 / max(self.num_classes, 1))
        return torch.where(total > 0, clipped / total.clamp_min(1e-12), uniform).float()


def random_bag_index(num_samples: int, *, bag_size: int, rng: np.random.Generator) -> np.ndarray:
    """Random bags of bag_size: shuffle, cut into consecutive runs (the last bag holds the
    remainder, so it may be smaller). Returns the bag of each sample (int64)."""
    if bag_size < 1:
        raise ValueError(f"bag_size must be >= 1, got {bag_size}")
    index = np.empty(num_samples, dtype=np.int64)
    index[rng.permutation(num_samples)] = np.arange(num_samples) // bag_size
    return index


def given_bag_index(keys: np.ndarray) -> np.ndarray:
    """Bags from user-given bag ids (any integers): ids renumbered 0..B-1 in sorted order."""
    return np.unique(np.asarray(keys), return_inverse=True)[1].astype(np.int64).reshape(-1)


def bag_counts(
    labels: np.ndarray, bag_index: np.ndarray, *, num_bags: int, num_classes: int
) -> np.ndarray:
    """Class counts per bag, int64 num_bags x num_classes."""
    counts = np.zeros((num_bags, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(bag_index), np.asarray(labels)), 1)
    return counts


def make_bags(
    images: torch.Tensor,
    labels: torch.Tensor,
    bag_index: np.ndarray,
    *,
    num_classes: int,
    mechanism: str,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
    method: str = "dllp",
    bp: BpParams | None = None,
) -> Bags:
    """Group images into bags and release their class counts; the labels go no further.

    epsilon == 0 releases exact counts (no privacy); epsilon > 0 adds ``mechanism`` noise
    calibrated by :mod:`fedlabel.data.label_dp`, drawn from ``rng``."""
    num_bags = int(bag_index.max()) + 1 if len(bag_index) else 0
    counts = bag_counts(labels.numpy(), bag_index, num_bags=num_bags, num_classes=num_classes)
    scale = 0.0
    if epsilon > 0:
        scale = label_dp.noise_scale(mechanism, epsilon=epsilon, delta=delta)
        released = label_dp.noisy_counts(counts, mechanism=mechanism, scale=scale, rng=rng)
        epsilon = label_dp.released_epsilon(mechanism, scale=scale, delta=delta)
    else:
        released, mechanism = counts.astype(np.float64), ""
    return Bags(
        images=images,
        bag_index=torch.from_numpy(np.asarray(bag_index, dtype=np.int64)),
        counts=torch.from_numpy(released),
        epsilon=float(epsilon),
        mechanism=mechanism,
        noise_scale=scale,
        method=method,
        bp=bp or BpParams(),
    )


@dataclass(frozen=True)
class BagSpec:
    """How build_federated turns each client's labeled part into bags.

    size > 0: random bags of that size inside each client; size == 0: bags from the data set's
    own per-sample bag ids (ImageDataset.train_bags), split by client, so a user bag spread over
    several clients becomes one bag per client. epsilon > 0 adds label-DP noise to the counts."""

    size: int = 0
    method: str = "dllp"
    mechanism: str = "laplace"
    epsilon: float = 0.0
    delta: float = 1e-5
    bp: BpParams = field(default_factory=BpParams)
    secure_noise: bool = (
        False  # count noise from the OS's entropy (privacy.secure_noise), not the seed
    )
