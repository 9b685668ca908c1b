"""FedProx: the proximal term on hand-checked numbers, and its effect on the client update."""

import pytest
import torch
from torch import nn

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.algorithms.fedavg import FedAvg, FedAvgParams
from fedlabel.config import ConfigError
from fedlabel.training import ClientContext, SgdConfig, proximal_term, sgd_train
from tests.helpers import tiny_client, tiny_model


def test_proximal_term_by_hand():
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    c = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    assert proximal_term(w, c, mu=0.5).item() == pytest.approx(0.25 * (1 + 4 + 4))


def test_sgd_train_adds_the_proximal_gradient_every_step():
    # loss = w^2 on a 1-parameter linear model, w0 = 2, lr 0.1, mu 1.
    # step 1: grad 4 (prox 0 at w0) -> 1.6; step 2: grad 3.2 + 1 * (1.6 - 2) = 2.8 -> 1.32.
    model = nn.Linear(1, 1, bias=False)
    w0 = {"weight": torch.tensor([[2.0]])}
    loss_fn = lambda f, _: f(torch.ones(1, 1)).pow(2).sum()  # noqa: E731
    sgd = SgdConfig(lr=0.1)
    prox, loss = sgd_train(model, w0, batches=[0, 1], loss_fn=loss_fn, sgd=sgd, prox_mu=1.0)
    plain, _ = sgd_train(model, w0, batches=[0, 1], loss_fn=loss_fn, sgd=sgd)
    assert prox["weight"].item() == pytest.approx(1.32)
    assert plain["weight"].item() == pytest.approx(1.28)
    assert loss == pytest.approx(
        (4.0 + 1.6**2) / 2
    )  # the data loss only, without the proximal term


def _delta(algo, client):
    model, w = tiny_model()
    u = algo.client_update(
        model, w, client, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(3))
    )
    return u, torch.cat([v.flatten() for v in u.deltas["model"].values()])


def test_fedprox_zero_mu_is_fedavg_and_mu_shrinks_the_step():
    client = tiny_client(num_labeled=16, num_unlabeled=4)
    common = dict(
        local_steps=8, batch_size=8, lr=0.05, weak_shift=0
    )  # lr * mu < 1: the pull is stable
    u_avg, d_avg = _delta(FedAvg(FedAvgParams(**common)), client)
    u0, d0 = _delta(build_algorithm(ALGORITHMS["fedprox"].params(mu=0.0, **common)), client)
    _, d_big = _delta(build_algorithm(ALGORITHMS["fedprox"].params(mu=4.0, **common)), client)
    assert torch.equal(d0, d_avg) and u0.weight == u_avg.weight == 16
    assert d_big.norm() < d_avg.norm()


def test_mu_must_be_non_negative():
    with pytest.raises(ConfigError, match=r"algorithm\.mu"):
        ALGORITHMS["fedprox"].params(mu=-0.1).validate()
