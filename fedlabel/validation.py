"""Server-side checks of client updates before aggregation (pure functions, every runtime).

An update is rejected, never repaired: the server logs the client id and the reason and
aggregates only the updates that passed, so a bad update never touches the global model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedlabel.algorithms import ClientUpdate
from fedlabel.robust import update_norm
from fedlabel.training import Params

# Rejection reasons, as they appear in summary.json.
KEYS = "keys"  # wrong delta names or parameter names
SHAPE = "shape"
DTYPE = "dtype"
NON_FINITE = "non_finite"  # NaN or Inf in a delta or a metric
NORM = "norm"  # L2 norm of the update above faults.max_update_norm
WEIGHT = "weight"  # r_k negative, NaN/Inf, or more than the client's sample count
CLIENT = "client"  # a client id that was not asked this round, or asked twice
UNDECODABLE = "undecodable"  # a reply the transport could not turn into an update
COUNTERS = (  # counters that contradict each other, the client's size, or a sane loss range
    "counters"
)

# Sample counters, each a whole number >= 0; (smaller, larger) pairs that must hold when both are
# sent.
COUNTS = (
    "num_labeled",
    "num_unlabeled",
    "num_kept",
    "num_kept_correct",
    "num_kept_global",
    "num_kept_global_correct",
    "num_helper_models",
)
ORDERED = (
    ("num_kept", "num_unlabeled"),
    ("num_kept_correct", "num_kept"),
    ("num_kept_global", "num_kept"),
    ("num_kept_global_correct", "num_kept_global"),
    ("num_kept_global_correct", "num_kept_correct"),
)
LOSSES = ("loss_labeled", "loss_unlabeled")
MAX_ABS_LOSS = 1e6  # far above any training loss here (cross-entropy of a wrecked model is O(100))


@dataclass(frozen=True)
class Rejection:
    client_id: int
    reason: str
    detail: str

    def record(self) -> dict:
        return {"client": self.client_id, "reason": self.reason, "detail": self.detail}


def check_update(
    update: ClientUpdate,
    global_params: Params,
    *,
    delta_names: frozenset[str],
    max_update_norm: float = 0.0,
    max_weight: float = math.inf,
    max_unlabeled: float = math.inf,
) -> Rejection | None:
    """None if ``update`` may be aggregated, else the first reason it may not.

    Every named delta must have exactly the global parameters' names, shapes and dtypes and
    finite values; the L2 norm over all deltas must be at most ``max_update_norm`` (0 = no
    bound); the weight r_k must be finite and in [0, max_weight]; metrics must be finite numbers
    (or lists of them) and the counters consistent (:func:`check_counters`)."""

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(update.client_id, reason, detail)

    if not isinstance(update.deltas, dict) or set(update.deltas) != delta_names:
        got = (
            sorted(update.deltas)
            if isinstance(update.deltas, dict)
            else type(update.deltas).__name__
        )
        return reject(KEYS, f"deltas {got}, expected {sorted(delta_names)}")
    for name, delta in update.deltas.items():
        if not isinstance(delta, dict) or set(delta) != set(global_params):
            missing = sorted(set(global_params) - set(delta)) if isinstance(delta, dict) else []
            extra = sorted(set(delta) - set(global_params)) if isinstance(delta, dict) else []
            return reject(KEYS, f"delta {name!r}: missing {missing[:3]}, unexpected {extra[:3]}")
        for key, ref in global_params.items():
            value = delta[key]
            if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
                shape = (
                    tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                )
                return reject(
                    SHAPE, f"delta {name!r}, {key}: shape {shape}, expected {tuple(ref.shape)}"
                )
            if value.dtype != ref.dtype:
                return reject(
                    DTYPE, f"delta {name!r}, {key}: dtype {value.dtype}, expected {ref.dtype}"
                )
            if not bool(torch.isfinite(value).all()):
                return reject(NON_FINITE, f"delta {name!r}, {key} holds NaN or Inf")
    norm = update_norm(update.deltas)
    if max_update_norm > 0 and norm > max_update_norm:
        return reject(NORM, f"update norm {norm:.4g} > faults.max_update_norm={max_update_norm:g}")
    weight = update.weight
    if (
        not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or not 0 <= weight <= max_weight
    ):
        return reject(WEIGHT, f"weight r_k={weight!r} is not in [0, {max_weight:g}]")
    for key, value in update.metrics.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return reject(
                NON_FINITE, f"metric {key}={value!r} is not a finite number (or list of them)"
            )
    problem = check_counters(update.metrics, max_labeled=max_weight, max_unlabeled=max_unlabeled)
    return reject(COUNTERS, problem) if problem else None


def check_counters(
    metrics: dict, *, max_labeled: float = math.inf, max_unlabeled: float = math.inf
) -> str | None:
    """None if the (finite) counters an update sent are possible, else what is impossible: every
    count a whole number >= 0, 0 <= num_kept_correct <= num_kept <= num_unlabeled (and the same for
    the global expert's counts), num_labeled <= max_labeled, num_unlabeled <= max_unlabeled (from
    the client's size at discovery), and each loss within +-MAX_ABS_LOSS."""
    counts = {k: metrics[k] for k in COUNTS if k in metrics}
    for key, value in counts.items():
        if not (isinstance(value, (int, float)) and value >= 0 and float(value).is_integer()):
            return f"{key}={value!r} is not a whole number >= 0"
    for small, large in ORDERED:
        if small in counts and counts[small] > counts.get(large, 0):
            return f"{small}={counts[small]!r} > {large}={counts.get(large, 0)!r}"
    if counts.get("num_labeled", 0) > max_labeled:
        return f"num_labeled={counts['num_labeled']!r} > the client's {max_labeled:g} samples"
    if counts.get("num_unlabeled", 0) > max_unlabeled:
        return (
            f"num_unlabeled={counts['num_unlabeled']!r} > {max_unlabeled:g}, the most the client's"
            " size allows"
        )
    for key in LOSSES:
        if key in metrics and not (
            isinstance(metrics[key], (int, float)) and abs(metrics[key]) <= MAX_ABS_LOSS
        ):
            return f"{key}={metrics[key]!r} is outside [-{MAX_ABS_LOSS:g}, {MAX_ABS_LOSS:g}]"
    return None


def screen_updates(
    updates: list[ClientUpdate],
    global_params: Params,
    *,
    cohort: list[int],
    delta_names: frozenset[str],
    max_update_norm: float = 0.0,
    client_sizes: dict[int, int] | None = None,
    unlabeled_passes: int = 1,
) -> tuple[list[ClientUpdate], list[Rejection]]:
    """Split a round's updates into (accepted, rejected). ``client_sizes`` (samples per client,
    when known) bounds each weight r_k, which counts samples in every algorithm here, and the
    counters: num_labeled by the size, num_unlabeled by ``unlabeled_passes`` x the size."""
    accepted: list[ClientUpdate] = []
    rejected: list[Rejection] = []
    seen: set[int] = set()
    for update in updates:
        cid = update.client_id
        if cid not in cohort or cid in seen:
            rejected.append(
                Rejection(
                    cid,
                    CLIENT,
                    f"client {cid} {'replied twice' if cid in seen else 'was not sampled'}",
                )
            )
            continue
        seen.add(cid)
        max_weight = (
            math.inf
            if client_sizes is None or cid not in client_sizes
            else float(client_sizes[cid])
        )
        problem = check_update(
            update,
            global_params,
            delta_names=delta_names,
            max_update_norm=max_update_norm,
            max_weight=max_weight,
            max_unlabeled=max_weight * unlabeled_passes,
        )
        if problem is None:
            accepted.append(update)
        else:
            rejected.append(problem)
    return accepted, rejected
