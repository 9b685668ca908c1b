"""FixMatch's unlabeled loss on hand-checked tensors, and the joint client update."""

import pytest
import torch
import torch.nn.functional as F

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.algorithms.fedavg import FedAvg, FedAvgParams
from fedlabel.algorithms.fixmatch import FixMatch, FixMatchParams, fixmatch_loss
from fedlabel.config import ConfigError
from fedlabel.training import ClientContext
from tests.helpers import tiny_client, tiny_model


def test_fixmatch_loss_by_hand():
    # row 0: max softmax(3,0,0) = e^3/(e^3+2) = 0.909 > 0.6, pseudo-label 0
    # row 1: uniform, 1/3 -> dropped; row 2: e^5/(e^5+2) > 0.6, pseudo-label 1
    weak = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    loss, keep, pseudo = fixmatch_loss(weak, strong, threshold=0.6)
    assert keep.tolist() == [True, False, True] and pseudo[keep].tolist() == [0, 1]
    ce0 = -torch.log_softmax(strong[0].detach(), 0)[0]
    ce2 = -torch.log_softmax(strong[2].detach(), 0)[1]
    assert loss.item() == pytest.approx(((ce0 + ce2) / 3).item())
    loss.backward()
    assert weak.grad is None  # the pseudo-label side carries no gradient
    assert strong.grad[1].abs().sum() == 0  # a dropped row contributes nothing


def test_fixmatch_threshold_is_strict_and_nothing_kept_gives_zero():
    weak = torch.zeros(2, 4)  # max prob 0.25, argmax 0
    strong = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
    loss, keep, _ = fixmatch_loss(weak, strong, threshold=0.25)
    assert not keep.any() and loss.item() == 0.0
    loss, keep, _ = fixmatch_loss(weak, strong, threshold=0.0)
    assert keep.all() and loss.item() == pytest.approx(
        F.cross_entropy(strong, torch.tensor([0, 0])).item()
    )


def _update(algo, client, seed=1):
    model, w = tiny_model()
    return algo.client_update(
        model, w, client, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(seed))
    )


def test_client_update_counters_and_weight():
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    u = _update(FixMatch(FixMatchParams(local_steps=3, batch_size=4, threshold=0.0)), client)
    m = u.metrics
    assert (
        m["num_labeled"] == 8 and m["num_unlabeled"] == 12
    )  # 3 steps x 4: one permutation of the 12
    assert (
        m["num_kept"] == 12 and 0 <= m["num_kept_correct"] <= 12
    )  # threshold 0 keeps every drawn row
    assert u.weight == 8 + 12
    # unlabeled batch = 2 x 4: each step draws 8 of a fresh permutation; rows count per draw,
    # the weight counts distinct samples
    big = _update(
        FixMatch(FixMatchParams(local_steps=3, batch_size=4, unlabeled_ratio=2, threshold=0.0)),
        client,
    )
    assert big.metrics["num_unlabeled"] == big.metrics["num_kept"] == 24
    assert 8 + 8 <= big.weight <= 8 + 12
    strict = _update(FixMatch(FixMatchParams(local_steps=3, batch_size=4, threshold=0.99)), client)
    assert (
        strict.metrics["num_kept"] == 0 and strict.weight == 8
    )  # a fresh model is never 99% sure of 3 classes


def test_labeled_part_is_fedavgs_when_the_unlabeled_loss_is_off():
    # weak_shift=0 and batch_size = num_labeled: every labeled batch is the whole labeled set, so
    # the labeled steps do not depend on the random draws and lambda_u=0 leaves FedAvg's update.
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    common = dict(local_steps=3, batch_size=8, weak_shift=0)
    fm = _update(FixMatch(FixMatchParams(lambda_u=0.0, threshold=0.0, **common)), client)
    avg = _update(FedAvg(FedAvgParams(**common)), client)
    for k in avg.deltas["model"]:
        assert torch.allclose(fm.deltas["model"][k], avg.deltas["model"][k], atol=1e-6)
    assert fm.metrics["loss_labeled"] == pytest.approx(avg.metrics["loss_labeled"], rel=1e-5)


def test_unlabeled_loss_changes_the_update_and_prox_zero_is_fedavg_fixmatch():
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    common = dict(local_steps=3, batch_size=4, threshold=0.0)
    on = _update(FixMatch(FixMatchParams(**common)), client)
    off = _update(FixMatch(FixMatchParams(lambda_u=0.0, **common)), client)
    prox0 = _update(
        build_algorithm(ALGORITHMS["fedprox_fixmatch"].params(mu=0.0, **common)), client
    )
    assert any(
        not torch.allclose(on.deltas["model"][k], off.deltas["model"][k])
        for k in on.deltas["model"]
    )
    assert all(
        torch.equal(on.deltas["model"][k], prox0.deltas["model"][k]) for k in on.deltas["model"]
    )
    assert on.metrics["loss_unlabeled"] > 0


@pytest.mark.parametrize("num_labeled,num_unlabeled", [(0, 12), (8, 0), (0, 0)])
def test_client_without_labeled_or_unlabeled_samples(num_labeled, num_unlabeled):
    u = _update(
        build_algorithm(
            ALGORITHMS["fedprox_fixmatch"].params(local_steps=2, batch_size=4, threshold=0.0)
        ),
        tiny_client(num_labeled=num_labeled, num_unlabeled=num_unlabeled),
    )
    assert u.weight == num_labeled + min(num_unlabeled, 8)
    assert all(torch.isfinite(v).all() for v in u.deltas["model"].values())
    if num_labeled == num_unlabeled == 0:
        assert all((v == 0).all() for v in u.deltas["model"].values())


def test_params_validation_names_field():
    with pytest.raises(ConfigError, match=r"algorithm\.threshold"):
        FixMatchParams(threshold=1.0).validate()
    with pytest.raises(ConfigError, match=r"algorithm\.unlabeled_ratio"):
        FixMatchParams(unlabeled_ratio=0).validate()
    with pytest.raises(ConfigError, match=r"algorithm\.mu"):
        ALGORITHMS["fedprox_fixmatch"].params(mu=-1.0).validate()
