"""The LLP supervised branch: whole-bag batches, DLLP steps, BP pseudo-labels."""

import dataclasses

import numpy as np
import pytest
import torch

from fedlabel.algorithms.fedavg import FedAvgParams, train_labeled
from fedlabel.data import ClientData
from fedlabel.data.bags import BpParams, make_bags, random_bag_index
from fedlabel.llp.bp import llp_mrf, loopy_bp
from fedlabel.llp.losses import proportion_loss
from fedlabel.llp.train import bag_batches, bp_pseudo_labels
from fedlabel.training import ClientContext, predict_logits
from tests.helpers import tiny_client, tiny_model


def bagged(client: ClientData, *, bag_size: int, method: str = "dllp", seed: int = 0) -> ClientData:
    index = random_bag_index(client.num_labeled, bag_size=bag_size, rng=np.random.default_rng(seed))
    bags = make_bags(
        client.labeled_images,
        client.labeled_labels,
        index,
        num_classes=3,
        mechanism="laplace",
        epsilon=0.0,
        delta=1e-5,
        rng=np.random.default_rng(seed),
        method=method,
    )
    return ClientData.bagged(
        client.client_id, bags, client.unlabeled_images, client.unlabeled_true_labels
    )


def test_batches_hold_whole_bags():
    client = bagged(tiny_client(num_labeled=40, num_unlabeled=0), bag_size=8)
    bags = client.bags
    batches = bag_batches(
        bags,
        ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0)),
        batch_size=16,
        steps=7,
    )
    assert len(batches) == 7
    for batch in batches:
        members = bags.bag_index[batch]
        assert len(torch.unique(members)) == 2
        for b in torch.unique(members):
            assert int((members == b).sum()) == int(bags.sizes[b])


def test_dllp_steps_lower_the_proportion_loss():
    client = bagged(tiny_client(num_labeled=48, num_unlabeled=0), bag_size=8)
    model, params = tiny_model()
    p = FedAvgParams(lr=0.1, local_steps=30, batch_size=16, weak_shift=0)
    local, _ = train_labeled(
        model,
        params,
        client,
        p,
        ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0)),
    )
    bags = client.bags

    def loss(w):
        logits = predict_logits(model, w, bags.images, device=torch.device("cpu"))
        return float(proportion_loss(logits, bags.bag_index, bags.proportions()))

    assert loss(local) < loss(params) - 0.05


def test_bp_recovers_labels_of_clustered_embeddings():
    # 3 classes, embeddings clustered by class with noise, bags of 6 with mixed classes and exact
    # counts, the default (authors') BP settings: pseudo-labels are (almost) all right.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(48) % 3
    centres = torch.randn(3, 16, generator=g) * 3
    emb = centres[labels] + torch.randn(48, 16, generator=g)
    bag_index = torch.from_numpy(random_bag_index(48, bag_size=6, rng=np.random.default_rng(0)))
    counts = torch.zeros(8, 3, dtype=torch.float64).index_put_(
        (bag_index, labels), torch.ones(48, dtype=torch.float64), accumulate=True
    )
    params = BpParams()
    marg = loopy_bp(
        llp_mrf(emb, bag_index, counts, params=params),
        iterations=params.iterations,
        damping=params.damping,
    )
    assert (marg.argmax(1) == labels).float().mean() >= 0.95


def test_bp_pseudo_labels_follow_pure_bags():
    # Bags that each hold one class, no kNN term: the count terms alone fix every pseudo-label.
    client = tiny_client(num_labeled=24, num_unlabeled=0)
    labels = client.labeled_labels
    index = labels.numpy().astype(np.int64)  # bag = class
    index = np.unique(index, return_inverse=True)[1].astype(np.int64)
    bags = make_bags(
        client.labeled_images,
        labels,
        index,
        num_classes=3,
        mechanism="laplace",
        epsilon=0.0,
        delta=1e-5,
        rng=np.random.default_rng(0),
        method="bp",
        bp=BpParams(lambda_similarity=0.0),
    )
    model, params = tiny_model()
    assert torch.equal(bp_pseudo_labels(model, params, bags, device=torch.device("cpu")), labels)


def test_bp_branch_trains_and_is_deterministic():
    client = bagged(tiny_client(num_labeled=32, num_unlabeled=0), bag_size=8, method="bp")
    model, params = tiny_model()
    p = FedAvgParams(local_steps=3, batch_size=16)

    def run():
        return train_labeled(
            model,
            params,
            client,
            p,
            ClientContext(torch.device("cpu"), torch.Generator().manual_seed(1)),
        )

    (a, loss_a), (b, loss_b) = run(), run()
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], params[k]) for k in a)


def test_client_without_labeled_images_takes_no_step():
    client = bagged(tiny_client(num_labeled=0, num_unlabeled=4), bag_size=8, method="bp")
    model, params = tiny_model()
    local, loss = train_labeled(
        model, params, client, FedAvgParams(), ClientContext(torch.device("cpu"), torch.Generator())
    )
    assert loss == 0.0 and all(torch.equal(local[k], params[k]) for k in params)


def test_bag_loss_weight_adds_the_proportion_loss():
    base = bagged(tiny_client(num_labeled=16, num_unlabeled=0), bag_size=8, method="bp")
    bags = base.bags
    weighted = ClientData.bagged(
        0, dataclasses.replace(bags, bp=BpParams(bag_loss_weight=0.5)), base.unlabeled_images, None
    )
    model, params = tiny_model()
    p = FedAvgParams(local_steps=1, batch_size=16, weak_shift=0)
    _, plain_loss = train_labeled(
        model, params, base, p, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0))
    )
    _, with_bag = train_labeled(
        model,
        params,
        weighted,
        p,
        ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0)),
    )
    logits = predict_logits(model, params, bags.images, device=torch.device("cpu"))
    assert with_bag == pytest.approx(
        plain_loss + 0.5 * float(proportion_loss(logits, bags.bag_index, bags.proportions())),
        rel=1e-5,
    )


@pytest.mark.parametrize("name", ["fedprox", "fedavg_fixmatch", "fedprox_uda", "fedlabel"])
def test_every_algorithm_with_a_train_labeled_branch_trains_on_bags(name):
    from fedlabel.algorithms import ALGORITHMS, build_algorithm

    client = bagged(tiny_client(num_labeled=16, num_unlabeled=32), bag_size=8)
    model, params = tiny_model()
    algorithm = build_algorithm(ALGORITHMS[name].params(local_steps=2, batch_size=8))
    update = algorithm.client_update(
        model, params, client, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0))
    )
    assert update.metrics["num_labeled"] == 16
    assert name == "fedprox" or update.metrics["num_unlabeled"] > 0  # the unlabeled branch ran too
    assert all(torch.isfinite(d).all() for d in update.deltas["model"].values())
