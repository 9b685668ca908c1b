"""Robust aggregation (fedlabel.robust): the rules against Flower's own functions, and the
cohort-relative bounds on hand-checked updates."""

import math

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from fedlabel.algorithms import ClientUpdate
from fedlabel.robust import (
    NORM,
    WEIGHT,
    bound_influence,
    combiner,
    coordinate_median,
    krum,
    lower_median,
    trimmed_mean,
    update_norm,
    weighted_mean,
)

TEMPLATE = {"conv.weight": torch.zeros(2, 1, 3, 3), "fc.bias": torch.zeros(3)}


def _deltas(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(v.shape, generator=g) for k, v in TEMPLATE.items()} for _ in range(n)]


def _flower(deltas, weights):
    return [([d[k].numpy() for k in TEMPLATE], w) for d, w in zip(deltas, weights)]


def _close(ours: dict, theirs: list[np.ndarray]) -> bool:
    return all(
        np.allclose(ours[k].numpy(), t, rtol=1e-6, atol=1e-6) for k, t in zip(TEMPLATE, theirs)
    )


@pytest.mark.parametrize("n", [3, 4, 7])
def test_median_and_trimmed_mean_equal_flowers(n):
    deltas, weights = _deltas(n), [float(i + 1) for i in range(n)]
    assert _close(
        coordinate_median(TEMPLATE, deltas, weights), aggregate_median(_flower(deltas, weights))
    )
    for fraction in (0.0, 0.2, 0.34, 0.49):
        ours = trimmed_mean(fraction)(TEMPLATE, deltas, weights)
        assert _close(ours, aggregate_trimmed_avg(_flower(deltas, weights), fraction))


@pytest.mark.parametrize("n,malicious,select", [(5, 1, 1), (7, 2, 1), (7, 1, 3)])
def test_krum_equals_flowers(n, malicious, select):
    deltas, weights = _deltas(n, seed=n), [float(2 * i + 1) for i in range(n)]
    deltas[1] = {k: v * 50 for k, v in deltas[1].items()}  # an outlier Krum must not pick
    theirs = aggregate_krum(_flower(deltas, weights), malicious, select if select > 1 else 0)
    assert _close(krum(malicious=malicious, select=select)(TEMPLATE, deltas, weights), theirs)


def test_weighted_mean_is_fedavg():
    deltas = [{k: torch.full_like(v, x) for k, v in TEMPLATE.items()} for x in (1.0, 4.0)]
    step = weighted_mean(TEMPLATE, deltas, [3.0, 1.0])
    assert all(torch.allclose(step[k], torch.full_like(TEMPLATE[k], 1.75)) for k in TEMPLATE)


def test_one_outlier_moves_the_median_not_the_mean():
    deltas = [{k: torch.full_like(v, x) for k, v in TEMPLATE.items()} for x in (1.0, 1.1, 1000.0)]
    assert float(coordinate_median(TEMPLATE, deltas, [1.0] * 3)["fc.bias"][0]) == pytest.approx(1.1)
    assert (
        float(
            combiner("none", trim_fraction=0, krum_malicious=0, krum_select=1)(
                TEMPLATE, deltas, [1.0] * 3
            )["fc.bias"][0]
        )
        > 300
    )


def test_lower_median_is_one_of_the_values():
    assert (
        lower_median([5.0, 1.0, 3.0]) == 3.0
        and lower_median([4.0, 1.0]) == 1.0
        and lower_median([2.0, 9.0, 1.0, 7.0]) == 2.0
    )


def _update(cid: int, scale: float, weight: float) -> ClientUpdate:
    return ClientUpdate(
        cid, {"model": {k: torch.full_like(v, scale) for k, v in TEMPLATE.items()}}, weight
    )


def test_bounds_clip_the_outlier_to_k_times_the_median_and_leave_the_rest_untouched():
    updates = [_update(0, 100.0, 1e9), _update(1, 1.0, 10.0), _update(2, 2.0, 20.0)]
    bounded, limits = bound_influence(updates, clip_to_median=3.0, weight_to_median=5.0)
    median_norm = update_norm(updates[1].deltas) * 2  # the lower median of norms 100x, 1x, 2x
    assert update_norm(bounded[0].deltas) == pytest.approx(3.0 * median_norm)
    assert bounded[0].weight == 5.0 * 20.0  # the lower median of weights 1e9, 10, 20
    assert (
        bounded[1] is updates[1] and bounded[2] is updates[2]
    )  # within both bounds: the same objects
    assert [(b.client_id, b.kind) for b in limits] == [(0, NORM), (0, WEIGHT)] and all(
        b.detail for b in limits
    )


def test_bounds_off_or_never_reached_change_nothing():
    updates = [_update(0, 1.0, 10.0), _update(1, 1.5, 12.0), _update(2, 2.0, 0.0)]
    for clip, cap in ((0.0, 0.0), (3.0, 10.0)):
        bounded, limits = bound_influence(updates, clip_to_median=clip, weight_to_median=cap)
        assert limits == [] and all(b is u for b, u in zip(bounded, updates))
    assert bound_influence([], clip_to_median=3.0, weight_to_median=3.0) == ([], [])
    zero = [
        _update(0, 0.0, 0.0),
        _update(1, 0.0, 0.0),
    ]  # zero norms and weights: nothing to bound by
    assert bound_influence(zero, clip_to_median=3.0, weight_to_median=3.0)[1] == []


def test_update_norm_spans_every_delta_in_float64():
    deltas = {"a": {"x": torch.full((4,), 3e38)}, "b": {"y": torch.tensor([1.0])}}
    assert update_norm(deltas) == pytest.approx(math.sqrt(4 * 3e38**2 + 1))


def test_unknown_rule():
    with pytest.raises(ValueError, match="bulyan"):
        combiner("bulyan", trim_fraction=0.2, krum_malicious=1, krum_select=1)
