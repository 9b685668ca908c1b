"""UDA's consistency loss against a slow per-row reference, and its client update."""

import math

import pytest
import torch

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.algorithms.fixmatch import FixMatch, FixMatchParams
from fedlabel.algorithms.uda import Uda, UdaParams, uda_loss
from fedlabel.config import ConfigError
from fedlabel.training import ClientContext
from tests.helpers import tiny_client, tiny_model


def test_uda_loss_by_hand():
    # row 0: softmax(2, 0) = (0.881, 0.119) > 0.8 kept; target softmax((2, 0) / 0.5) = softmax(4, 0)
    # row 1: softmax(0.5, 0) max 0.622 -> masked out
    weak = torch.tensor([[2.0, 0.0], [0.5, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    loss, keep, pseudo = uda_loss(weak, strong, temperature=0.5, threshold=0.8)
    assert keep.tolist() == [True, False] and pseudo.tolist() == [0, 0]
    t0 = 1 / (1 + math.exp(-4))  # target probability of class 0
    s0 = 1 / (1 + math.e)  # softmax(0, 1)[0]
    kl = t0 * math.log(t0 / s0) + (1 - t0) * math.log((1 - t0) / (1 - s0))
    assert loss.item() == pytest.approx(kl / 2, rel=1e-5)  # mean over the batch of 2
    loss.backward()
    assert weak.grad is None and strong.grad[1].abs().sum() == 0


def test_uda_loss_matches_slow_reference():
    torch.manual_seed(0)
    weak, strong = torch.randn(7, 5) * 2, torch.randn(7, 5)
    loss, keep, _ = uda_loss(weak, strong, temperature=0.4, threshold=0.5)
    total = 0.0
    for i in range(7):
        if torch.softmax(weak[i], 0).max() > 0.5:
            t = torch.softmax(weak[i] / 0.4, 0)
            s = torch.softmax(strong[i], 0)
            total += float((t * (t / s).log()).sum())
    assert 0 < keep.sum() < 7 and loss.item() == pytest.approx(total / 7, rel=1e-5)


def _update(algo, client):
    model, w = tiny_model()
    return algo.client_update(
        model, w, client, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(1))
    )


def test_uda_update_differs_from_fixmatch_only_in_the_unlabeled_loss():
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    common = dict(local_steps=3, batch_size=4)
    uda = _update(Uda(UdaParams(mask_threshold=0.0, **common)), client)
    fm = _update(FixMatch(FixMatchParams(threshold=0.0, **common)), client)
    # same draws, same pseudo-labels (argmax of the weak view), another loss
    for key in ("num_labeled", "num_unlabeled", "num_kept"):
        assert uda.metrics[key] == fm.metrics[key]
    assert uda.weight == fm.weight == 8 + 12
    assert any(
        not torch.allclose(uda.deltas["model"][k], fm.deltas["model"][k])
        for k in uda.deltas["model"]
    )
    prox0 = _update(
        build_algorithm(ALGORITHMS["fedprox_uda"].params(mu=0.0, mask_threshold=0.0, **common)),
        client,
    )
    assert all(
        torch.equal(uda.deltas["model"][k], prox0.deltas["model"][k]) for k in uda.deltas["model"]
    )


def test_params_validation_names_field():
    with pytest.raises(ConfigError, match=r"algorithm\.temperature"):
        UdaParams(temperature=0.0).validate()
    with pytest.raises(ConfigError, match=r"algorithm\.mask_threshold"):
        UdaParams(mask_threshold=1.0).validate()
    with pytest.raises(ConfigError, match=r"algorithm\.mu"):
        ALGORITHMS["fedprox_uda"].params(mu=-1.0).validate()
