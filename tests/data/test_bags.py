"""Bagged clients: only class counts leave the data layer; instance labels cannot be read."""

import dataclasses

import numpy as np
import pytest
import torch

from fedlabel.config import ConfigError, config_from_dict
from fedlabel.data import Bags, BagSpec, DataError, ImageDataset, InstanceLabelsUnavailable
from fedlabel.data.bags import bag_counts, given_bag_index, random_bag_index
from fedlabel.federation import load_federated
from tests.data.test_federated import NUM_CLASSES, build, synthetic


def true_labels(client) -> torch.Tensor:
    """Recover labels from the synthetic images (pixel = 10 * label + 1); the test's own oracle."""
    return (client.labeled_images[:, 0, 0, 0].long() - 1) // 10


def test_bagged_client_exposes_no_instance_labels():
    fed = build(synthetic(), label_ratio=0.5, bags=BagSpec(size=8))
    for client in fed.clients:
        with pytest.raises(InstanceLabelsUnavailable, match=f"client {client.client_id}: .* bags"):
            client.labeled_labels
        truth = true_labels(client)
        # No tensor the object holds is the instance labels: the labels were never stored.
        held = [v for v in vars(client).values() if isinstance(v, torch.Tensor)]
        held += [getattr(client.bags, f.name) for f in dataclasses.fields(Bags)]
        assert client._instance_labels is None
        assert not any(
            isinstance(t, torch.Tensor) and t.shape == truth.shape and torch.equal(t, truth)
            for t in held
        )


def test_bags_keep_exact_counts_and_sizes():
    ds = synthetic()
    plain = build(ds, label_ratio=0.5)
    bagged = build(ds, label_ratio=0.5, bags=BagSpec(size=8))
    for p, b in zip(plain.clients, bagged.clients, strict=True):
        assert torch.equal(p.labeled_images, b.labeled_images)  # bags do not change the partition
        bags = b.bags
        sizes = bags.sizes.tolist()
        assert (
            sum(sizes) == b.num_labeled and all(s == 8 for s in sizes[:-1]) and 1 <= sizes[-1] <= 8
        )
        want = bag_counts(
            p.labeled_labels.numpy(),
            bags.bag_index.numpy(),
            num_bags=bags.num_bags,
            num_classes=NUM_CLASSES,
        )
        assert torch.equal(bags.counts, torch.from_numpy(want).double())
        assert bags.epsilon == 0.0 and bags.mechanism == ""
        assert torch.allclose(bags.proportions().sum(1), torch.ones(bags.num_bags))
        stats = b.stats(NUM_CLASSES)
        assert stats["labeled_histogram"] == p.stats(NUM_CLASSES)["labeled_histogram"]
        assert stats["num_bags"] == bags.num_bags


def test_noisy_counts_are_seeded_and_report_their_epsilon():
    ds = synthetic()
    spec = BagSpec(size=4, epsilon=1.0, mechanism="gaussian", delta=1e-5)
    a, b = build(ds, bags=spec), build(ds, bags=spec)
    exact = build(ds, bags=BagSpec(size=4))
    assert all(torch.equal(x.bags.counts, y.bags.counts) for x, y in zip(a.clients, b.clients))
    assert not all(
        torch.equal(x.bags.counts, y.bags.counts) for x, y in zip(a.clients, exact.clients)
    )
    bags = a.clients[0].bags
    assert (
        bags.mechanism == "gaussian" and bags.epsilon == pytest.approx(1.0) and bags.noise_scale > 1
    )
    assert torch.all(bags.proportions() >= 0) and torch.allclose(
        bags.proportions().sum(1), torch.ones(bags.num_bags)
    )


def test_random_bag_index_and_given_ids():
    index = random_bag_index(10, bag_size=3, rng=np.random.default_rng(0))
    assert sorted(np.bincount(index).tolist()) == [1, 3, 3, 3]
    assert given_bag_index(np.array([7, -2, 7, 40])).tolist() == [1, 0, 1, 2]


def test_bags_from_an_npz_key(tmp_path):
    ds = synthetic(200)
    bag_ids = np.arange(200) // 5  # 40 user bags of 5 consecutive samples
    path = tmp_path / "data.npz"
    np.savez(
        path,
        train_images=ds.train_images[:, 0].numpy(),
        train_labels=ds.train_labels.numpy(),
        test_images=ds.test_images[:, 0].numpy(),
        test_labels=ds.test_labels.numpy(),
        train_bags=bag_ids,
    )
    cfg = config_from_dict(
        {
            "data": {
                "name": "npz",
                "root": str(path),
                "bag_key": "train_bags",
                "num_clients": 2,
                "partition": "iid",
                "label_ratio": 0.5,
            },
            "clients_per_round": 1,
        }
    )
    fed = load_federated(cfg)
    for client in fed.clients:
        with pytest.raises(InstanceLabelsUnavailable):
            client.labeled_labels
        # each client bag is the client's share of one user bag of 5; the counts are exact
        assert client.bags.sizes.max() <= 5 and client.bags.sizes.sum() == client.num_labeled
        truth = torch.bincount(true_labels(client), minlength=NUM_CLASSES).double()
        assert torch.equal(client.bags.counts.sum(0), truth)
    cfg_missing = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, bag_key="nope"))
    with pytest.raises(DataError, match="nope"):
        load_federated(cfg_missing)


def test_given_bags_are_grouped_by_user_id():
    ds = synthetic(120)
    ds = ImageDataset(
        ds.name,
        ds.train_images,
        ds.train_labels,
        ds.test_images,
        ds.test_labels,
        ds.num_classes,
        train_bags=torch.arange(120) // 10,
    )
    fed = build(ds, num_clients=2, partition="iid", label_ratio=1.0, bags=BagSpec(size=0))
    total_bags = 0
    for client in fed.clients:
        total_bags += client.bags.num_bags
        assert client.bags.sizes.sum() == client.num_labeled
    assert total_bags >= 12  # 12 user bags, each split over at most 2 clients


def test_dataset_without_bag_ids_is_refused():
    with pytest.raises(DataError, match="bag ids"):
        build(synthetic(), bags=BagSpec(size=0))


@pytest.mark.parametrize(
    "data, field",
    [
        ({"bag_size": -1}, "data.bag_size"),
        ({"bag_key": "train_bags"}, "data.bag_key"),
        ({"bag_size": 8, "llp_method": "easyllp"}, "data.llp_method"),
        ({"proportion_epsilon": 1.0}, "data.proportion_epsilon"),
        ({"bag_size": 8, "proportion_epsilon": -1.0}, "data.proportion_epsilon"),
        ({"bag_size": 8, "proportion_noise": "uniform"}, "data.proportion_noise"),
        ({"bag_size": 8, "bp_damping": 1.0}, "data.bp_damping"),
    ],
)
def test_bad_bag_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_dict({"data": data})


def test_algorithms_without_an_llp_branch_refuse_bags():
    with pytest.raises(ConfigError, match="data.bag_size: algorithm fedmatch .*fedavg"):
        config_from_dict({"algorithm": {"name": "fedmatch"}, "data": {"bag_size": 8}})
    for name in (
        "fedavg",
        "fedprox",
        "fedlabel",
        "fedavg_fixmatch",
        "fedprox_uda",
        "fedlabel_local_only",
    ):
        config_from_dict({"algorithm": {"name": name}, "data": {"bag_size": 8}})
