"""Update validation: every rejection reason, and a rejected update never reaches the model."""

import math

import pytest
import torch

from fedlabel.algorithms import ClientUpdate, build_algorithm
from fedlabel.config import config_from_dict
from fedlabel.faults import CRASHED, TIMEOUT, ClientFailure
from fedlabel.federation import RoundFailed, screen_round
from fedlabel.validation import (
    CLIENT,
    COUNTERS,
    DTYPE,
    KEYS,
    NON_FINITE,
    NORM,
    SHAPE,
    WEIGHT,
    Rejection,
    check_update,
    screen_updates,
)

GLOBAL = {"conv.weight": torch.zeros(2, 1, 3, 3), "fc.bias": torch.zeros(3)}
MODEL = frozenset({"model"})


def _delta(scale: float = 0.1) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, scale) for k, v in GLOBAL.items()}


def _update(cid: int = 0, *, deltas=None, weight: float = 5.0, metrics=None) -> ClientUpdate:
    return ClientUpdate(
        client_id=cid,
        deltas={"model": _delta()} if deltas is None else deltas,
        weight=weight,
        metrics={"num_labeled": 5} if metrics is None else metrics,
    )


def _with(key: str, value) -> dict:
    delta = _delta()
    delta[key] = value
    return {"model": delta}


def test_valid_update_passes():
    assert (
        check_update(_update(), GLOBAL, delta_names=MODEL, max_update_norm=10.0, max_weight=5.0)
        is None
    )
    listed = _update(metrics={"num_labeled": 5, "histogram": [2, 3]})
    assert (
        check_update(listed, GLOBAL, delta_names=MODEL, max_update_norm=10.0, max_weight=5.0)
        is None
    )


@pytest.mark.parametrize(
    "update,reason",
    [
        (_update(deltas={"labeled": _delta()}), KEYS),  # wrong delta name
        (_update(deltas={"model": _delta(), "extra": _delta()}), KEYS),
        (
            _update(deltas={"model": {"conv.weight": torch.zeros(2, 1, 3, 3)}}),
            KEYS,
        ),  # a parameter missing
        (_update(deltas=_with("fc.weight", torch.zeros(3))), KEYS),  # an unknown parameter
        (_update(deltas=_with("fc.bias", torch.zeros(4))), SHAPE),
        (_update(deltas=_with("fc.bias", [0.0, 0.0, 0.0])), SHAPE),  # not a tensor
        (_update(deltas=_with("fc.bias", torch.zeros(3, dtype=torch.float64))), DTYPE),
        (_update(deltas=_with("fc.bias", torch.tensor([0.0, math.nan, 0.0]))), NON_FINITE),
        (_update(deltas=_with("fc.bias", torch.tensor([0.0, math.inf, 0.0]))), NON_FINITE),
        (_update(deltas={"model": _delta(100.0)}), NORM),
        (_update(weight=-1.0), WEIGHT),
        (_update(weight=math.nan), WEIGHT),
        (_update(weight=math.inf), WEIGHT),
        (_update(weight=6.0), WEIGHT),  # more than the client's 5 samples
        (_update(metrics={"loss_labeled": math.nan}), NON_FINITE),
        (_update(metrics={"histogram": [1, math.inf]}), NON_FINITE),
        (_update(metrics={"name": "x"}), NON_FINITE),
    ],
)
def test_each_rejection_reason(update, reason):
    problem = check_update(update, GLOBAL, delta_names=MODEL, max_update_norm=10.0, max_weight=5.0)
    assert isinstance(problem, Rejection)
    assert problem.reason == reason and problem.client_id == update.client_id and problem.detail


def test_norm_bound_zero_means_unbounded():
    assert (
        check_update(
            _update(deltas={"model": _delta(1e6)}), GLOBAL, delta_names=MODEL, max_update_norm=0.0
        )
        is None
    )


def test_norm_of_huge_float32_values_does_not_overflow():
    big = _with("fc.bias", torch.full((3,), 3e38))
    assert (
        check_update(_update(deltas=big), GLOBAL, delta_names=MODEL, max_update_norm=1e4).reason
        == NORM
    )


def test_unsampled_and_duplicate_clients_are_rejected():
    updates = [_update(0), _update(7), _update(0)]
    accepted, rejected = screen_updates(
        updates, GLOBAL, cohort=[0, 1], delta_names=MODEL, client_sizes={0: 5, 1: 5}
    )
    assert [u.client_id for u in accepted] == [0]
    assert [(r.client_id, r.reason) for r in rejected] == [(7, CLIENT), (0, CLIENT)]


def _cfg(**faults):
    return config_from_dict(
        {
            "algorithm": {"name": "fedavg"},
            "data": {"num_clients": 4},
            "clients_per_round": 3,
            "faults": faults,
        }
    )


def test_rejected_update_never_touches_the_global_model():
    cfg = _cfg()
    algorithm = build_algorithm(cfg.algorithm)
    bad = _update(1, deltas=_with("fc.bias", torch.tensor([math.nan, 0.0, 0.0])))
    results = [_update(0), bad, ClientFailure(2, CRASHED, "boom")]
    accepted, failed, rejected = screen_round(cfg, algorithm, 1, [0, 1, 2], results, GLOBAL)
    new = algorithm.aggregate(GLOBAL, accepted)
    assert all(
        torch.equal(new[k], GLOBAL[k] + _delta()[k]) for k in GLOBAL
    )  # exactly the good update alone
    assert [(f.client_id, f.reason) for f in failed] == [(2, CRASHED)]
    assert [(r.client_id, r.reason) for r in rejected] == [(1, NON_FINITE)]


def test_clients_without_a_result_count_as_timed_out():
    cfg = _cfg()
    _, failed, _ = screen_round(
        cfg, build_algorithm(cfg.algorithm), 1, [0, 1, 2], [_update(0)], GLOBAL
    )
    assert sorted((f.client_id, f.reason) for f in failed) == [(1, TIMEOUT), (2, TIMEOUT)]


def test_too_few_accepted_updates_fail_the_round():
    cfg = _cfg(min_clients=2)
    results = [_update(0), _update(1, weight=-3.0), ClientFailure(2, TIMEOUT)]
    with pytest.raises(
        RoundFailed, match=r"round 4: 1 of 3 .*faults\.min_clients=2.*\(1, 'weight'\)"
    ):
        screen_round(cfg, build_algorithm(cfg.algorithm), 4, [0, 1, 2], results, GLOBAL)


SEMI = {
    "num_labeled": 5,
    "num_unlabeled": 20,
    "num_kept": 10,
    "num_kept_correct": 8,
    "num_kept_global": 4,
    "num_kept_global_correct": 3,
    "loss_labeled": 0.7,
    "loss_unlabeled": 1.2,
}


def _counters(**changes) -> ClientUpdate:
    return _update(metrics={**SEMI, **changes})


def test_consistent_counters_pass():
    assert (
        check_update(_counters(), GLOBAL, delta_names=MODEL, max_weight=25.0, max_unlabeled=25.0)
        is None
    )


@pytest.mark.parametrize(
    "update",
    [
        _counters(
            num_kept=1e9, loss_labeled=-1e30
        ),  # the review's update: coverage 2,770,083 published
        _counters(
            num_kept=1e9, num_unlabeled=1e9
        ),  # consistent with each other, not with the client's size
        _counters(num_kept=21),  # more kept than unlabeled
        _counters(num_kept_correct=11),  # more correct than kept
        _counters(num_kept_global=11),
        _counters(num_kept_global_correct=5),  # more than num_kept_global
        _counters(num_kept_global_correct=4, num_kept_correct=3),  # more than num_kept_correct
        _counters(num_labeled=26),  # more labeled samples than the client has
        _counters(num_labeled=-1),
        _counters(num_unlabeled=20.5),
        _counters(loss_labeled=-1e30),
        _counters(loss_unlabeled=1e7),
        _update(metrics={"num_kept_correct": 1}),  # correct pseudo-labels without kept ones
    ],
)
def test_absurd_counters_are_rejected_by_reason(update):
    problem = check_update(update, GLOBAL, delta_names=MODEL, max_weight=25.0, max_unlabeled=25.0)
    assert isinstance(problem, Rejection) and problem.reason == COUNTERS and problem.detail


def test_counters_bounded_by_the_size_times_the_passes_for_per_step_counters():
    """FixMatch and FedMatch count unlabeled samples over their local steps: up to steps x size."""
    update = _update(0, weight=5.0, metrics={**SEMI, "num_unlabeled": 60})
    accepted, rejected = screen_updates(
        [update], GLOBAL, cohort=[0], delta_names=MODEL, client_sizes={0: 25}
    )
    assert (
        accepted == []
        and rejected[0].reason == COUNTERS
        and "num_unlabeled=60" in rejected[0].detail
    )
    accepted, _ = screen_updates(
        [update], GLOBAL, cohort=[0], delta_names=MODEL, client_sizes={0: 25}, unlabeled_passes=3
    )
    assert accepted == [update]


def test_screen_round_applies_the_algorithms_counter_bound():
    cfg = config_from_dict(
        {
            "algorithm": {"name": "fedavg_fixmatch", "local_steps": 4},
            "data": {"num_clients": 4},
            "clients_per_round": 1,
        }
    )
    update = _update(0, weight=5.0, metrics={"num_labeled": 5, "num_unlabeled": 90, "num_kept": 3})
    accepted, _, _ = screen_round(
        cfg, build_algorithm(cfg.algorithm), 1, [0], [update], GLOBAL, client_sizes={0: 25}
    )
    assert accepted == [update]  # 90 <= 4 steps x 25 samples
