"""Aggregation against a dishonest minority: bounding one site's influence, and robust rules.

Every engine's server loop (fedlabel.federation) runs, after the checks of fedlabel.validation:
 1. :func:`bound_influence`: an update whose L2 norm (over all its deltas) exceeds k x the lower
    median norm of the round's accepted updates is scaled down to that norm, and a weight r_k
    above c x the lower median of the positive weights is lowered to it (aggregation.clip_to_median,
    aggregation.weight_to_median). The lower median is the norm (weight) of one of the cohort's
    updates; while fewer than half the cohort is dishonest it lies between the smallest and the
    largest honest value, so the honest majority sets the bound and is never the one excluded.
    Updates within both bounds are passed on untouched (the same tensors), so an honest round
    without a clip is bitwise the round without these bounds.
 2. A combine rule (aggregation.robust) turns the deltas and weights into the step added to the
    global model: :func:`weighted_mean` (FedAvg), :func:`coordinate_median`, :func:`trimmed_mean`,
    :func:`krum`.

The robust rules follow Flower's (flwr.server.strategy.aggregate: aggregate_median,
aggregate_trimmed_avg, aggregate_krum; tests/test_robust.py checks them against those), written
again here in torch because the library does not import flwr (the in-process and vectorized engines
run without it), the deltas are torch state dicts, possibly on a GPU, which Flower's functions
would take as numpy lists in a fixed key order, and Flower's trimmed mean and median cast to numpy's
float64 arithmetic while the global model stays float32 here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from fedlabel.training import Params, add_scaled, zeros_like

if TYPE_CHECKING:
    from fedlabel.algorithms.base import ClientUpdate

# (global parameters as template, deltas, weights r_k > 0) -> the step added to the global model
Combine = Callable[[Params, list[Params], list[float]], Params]

NORM = "norm"  # an update scaled down to clip_to_median x the median norm
WEIGHT = "weight"  # a weight lowered to weight_to_median x the median weight


def update_norm(deltas: dict[str, Params]) -> float:
    """L2 norm over every tensor of every named delta, in float64 (no float32 overflow)."""
    squares = (
        float(torch.linalg.vector_norm(v.double())) ** 2
        for d in deltas.values()
        for v in d.values()
    )
    return math.sqrt(sum(squares))


def lower_median(values: list[float]) -> float:
    """The ceil(n/2)-th smallest value: one of the values, and between the smallest and largest of
    any majority of them."""
    return sorted(values)[(len(values) - 1) // 2]


@dataclasses.dataclass(frozen=True)
class Limit:
    """An accepted update whose influence was bounded: NORM or WEIGHT, with the values."""

    client_id: int
    kind: str
    detail: str

    def record(self) -> dict:
        return {"client": self.client_id, "kind": self.kind, "detail": self.detail}


def bound_influence(
    updates: list[ClientUpdate], *, clip_to_median: float, weight_to_median: float
) -> tuple[list[ClientUpdate], list[Limit]]:
    """(updates with bounded norms and weights, what was bounded); 0 disables a bound."""
    limits: list[Limit] = []
    if not updates:
        return updates, limits
    norms = [update_norm(u.deltas) for u in updates]
    norm_bound = clip_to_median * lower_median(norms) if clip_to_median > 0 else math.inf
    positive = [u.weight for u in updates if u.weight > 0]
    weight_bound = (
        weight_to_median * lower_median(positive) if weight_to_median > 0 and positive else math.inf
    )
    out = []
    for u, norm in zip(updates, norms):
        if norm > norm_bound:
            scale = norm_bound / norm
            u = dataclasses.replace(
                u, deltas={n: {k: v * scale for k, v in d.items()} for n, d in u.deltas.items()}
            )
            detail = (
                f"norm {norm:.4g} clipped to {norm_bound:.4g} ({clip_to_median:g} x the median"
                " norm)"
            )
            limits.append(Limit(u.client_id, NORM, detail))
        if u.weight > weight_bound:
            detail = (
                f"weight {u.weight:.4g} capped at {weight_bound:.4g} ({weight_to_median:g} x the"
                " median weight)"
            )
            limits.append(Limit(u.client_id, WEIGHT, detail))
            u = dataclasses.replace(u, weight=weight_bound)
        out.append(u)
    return out, limits


# ---------------------------------------------------------------------------------------------
# combine rules: (template, deltas, weights) -> step


def weighted_mean(template: Params, deltas: list[Params], weights: list[float]) -> Params:
    """sum_k (r_k / sum_j r_j) Delta_k (FedAvg), accumulated in the given order."""
    total = sum(weights)
    step = zeros_like(template)
    for delta, weight in zip(deltas, weights):
        add_scaled(step, delta, weight / total)
    return step


def _stacked(template: Params, deltas: list[Params], key: str) -> torch.Tensor:
    return torch.stack([d[key].to(template[key].device) for d in deltas])


def coordinate_median(template: Params, deltas: list[Params], weights: list[float]) -> Params:
    """The coordinate-wise median of the deltas (Yin et al., ICML 2018); the mean of the two middle
    values for an even count, as numpy's (Flower's aggregate_median). Weights are ignored."""
    n = len(deltas)
    out = {}
    for key in template:
        values = _stacked(template, deltas, key).sort(dim=0).values
        out[key] = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return out


def trimmed_mean(fraction: float) -> Combine:
    """The coordinate-wise mean after cutting int(fraction x n) values at each end (Flower's
    aggregate_trimmed_avg, after scipy's trim_mean). Weights are ignored."""

    def combine(template: Params, deltas: list[Params], weights: list[float]) -> Params:
        n = len(deltas)
        cut = int(fraction * n)
        return {
            k: _stacked(template, deltas, k).sort(dim=0).values[cut : n - cut].mean(dim=0)
            for k in template
        }

    return combine


def krum_scores(deltas: list[Params], *, malicious: int) -> list[float]:
    """Krum's score of each delta (Blanchard et al., NeurIPS 2017): the sum of its squared L2
    distances to its n - f - 2 nearest other deltas (at least 1), f = ``malicious``."""
    flat = torch.stack(
        [torch.cat([v.double().flatten().cpu() for v in d.values()]) for d in deltas]
    )
    distances = torch.cdist(flat, flat).pow(2)
    closest = max(1, len(deltas) - malicious - 2)
    return [float(row.sort().values[1 : closest + 1].sum()) for row in distances]


def krum(*, malicious: int, select: int) -> Combine:
    """The r_k-weighted mean of the ``select`` deltas with the lowest Krum scores (select = 1:
    Krum, the best delta itself; > 1: Multi-Krum), ties to the earlier (lower client id) delta."""

    def combine(template: Params, deltas: list[Params], weights: list[float]) -> Params:
        scores = krum_scores(deltas, malicious=malicious)
        best = sorted(sorted(range(len(deltas)), key=lambda i: scores[i])[:select])
        return weighted_mean(template, [deltas[i] for i in best], [weights[i] for i in best])

    return combine


def combiner(
    robust: str, *, trim_fraction: float, krum_malicious: int, krum_select: int
) -> Combine:
    """The combine rule named by aggregation.robust."""
    rules: dict[str, Callable[[], Combine]] = {
        "none": lambda: weighted_mean,
        "median": lambda: coordinate_median,
        "trimmed_mean": lambda: trimmed_mean(trim_fraction),
        "krum": lambda: krum(malicious=krum_malicious, select=krum_select),
    }
    if robust not in rules:
        raise ValueError(f"unknown robust rule {robust!r}; choose from {sorted(rules)}")
    return rules[robust]()
