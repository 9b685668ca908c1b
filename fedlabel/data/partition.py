"""Index partitions of a dataset across clients and labeled/unlabeled splits inside a client.

Pure numpy; every function draws only from the generator it is given. Results are sorted int64
index arrays.
"""

from __future__ import annotations

import numpy as np


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(part).astype(np.int64) for part in parts]


def partition_iid(
    num_samples: int, *, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle range(num_samples) and cut it into num_clients parts whose sizes differ by at most
    one."""
    if not 1 <= num_clients <= num_samples:
        raise ValueError(
            f"need 1 <= num_clients <= num_samples, got num_clients={num_clients},"
            f" num_samples={num_samples}"
        )
    return _sorted(np.array_split(rng.permutation(num_samples), num_clients))


def partition_dirichlet(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    min_client_size: int,
    rng: np.random.Generator,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Per-class Dirichlet split: each class's shuffled indices go to clients in Dir(alpha)
    proportions.

    The whole split is redrawn until every client holds at least min_client_size samples.
    (flwr-datasets' DirichletPartitioner does the same on HuggingFace datasets, which we do not
    use.)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    if num_clients < 1 or alpha <= 0 or min_client_size < 0 or max_tries < 1:
        raise ValueError(
            "need num_clients >= 1, alpha > 0, min_client_size >= 0, max_tries >= 1; got"
            f" num_clients={num_clients}, alpha={alpha}, min_client_size={min_client_size},"
            f" max_tries={max_tries}"
        )
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for part, chunk in zip(parts, np.split(rng.permutation(members), cuts)):
                part.append(chunk)
        merged = [np.concatenate(part) if part else np.empty(0, np.int64) for part in parts]
        if min(map(len, merged)) >= min_client_size:
            return _sorted(merged)
    raise ValueError(
        f"Dirichlet partition failed {max_tries} times to give every client >= {min_client_size}"
        f" samples (alpha={alpha}, num_clients={num_clients}, min_client_size={min_client_size},"
        f" {len(labels)} samples); raise alpha, or lower num_clients or min_client_size"
    )


def split_labeled(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    label_ratio: float,
    rng: np.random.Generator,
    labeled_class_alpha: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's indices into (labeled, unlabeled); round(label_ratio * len(indices)) are
    labeled.

    labels are those of the whole dataset (labels[indices] belong to this client). With
    labeled_class_alpha == 0 the labeled samples are a uniform draw; with > 0, class weights
    q ~ Dir(labeled_class_alpha) over the client's classes are drawn and samples are picked without
    replacement with probability proportional to q[label] (Gumbel top-k), so the labeled and
    unlabeled class mixes differ.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0.0 <= label_ratio <= 1.0 or labeled_class_alpha < 0:
        raise ValueError(
            "need 0 <= label_ratio <= 1 and labeled_class_alpha >= 0, "
            f"got label_ratio={label_ratio}, labeled_class_alpha={labeled_class_alpha}"
        )
    num_labeled = round(label_ratio * len(indices))
    if labeled_class_alpha == 0:
        chosen = rng.choice(len(indices), size=num_labeled, replace=False)
    else:
        classes, position = np.unique(np.asarray(labels)[indices], return_inverse=True)
        weights = rng.dirichlet(np.full(len(classes), labeled_class_alpha))[position]
        noise = rng.gumbel(size=len(indices))
        with np.errstate(divide="ignore"):
            keys = np.log(weights) + noise
        # Zero-weight samples (-inf keys) come last, in random order.
        chosen = np.lexsort((-noise, -keys))[:num_labeled]
    mask = np.zeros(len(indices), dtype=bool)
    mask[chosen] = True
    return np.sort(indices[mask]), np.sort(indices[~mask])


def split_validation(
    labels: np.ndarray, *, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions range(len(labels)) into (validation, rest), stratified by class.

    round(fraction * len(labels)) samples are held out: class c gives floor(fraction * n_c) of its
    n_c, and the classes with the largest remainders (ties: lower class first) one more each, so
    every class's count is within 1 of fraction * n_c. Which samples of a class: a uniform draw.
    """
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"need 0 <= fraction < 1, got fraction={fraction}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    extra = int(round(fraction * len(labels))) - int(take.sum())
    take[np.argsort(take - quota, kind="stable")[:extra]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take) if k]
    mask = np.zeros(len(labels), dtype=bool)
    if chosen:
        mask[np.concatenate(chosen)] = True
    return np.flatnonzero(mask).astype(np.int64), np.flatnonzero(~mask).astype(np.int64)
