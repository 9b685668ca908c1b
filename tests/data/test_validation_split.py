"""data.val_fraction: the validation set is held out of the training split before any client is
formed, class-stratified and seeded, and with val_fraction=0 nothing else changes."""

import hashlib
import json

import numpy as np
import pytest
import torch

import fedlabel
from fedlabel.config import ConfigError, config_from_dict
from fedlabel.data import (
    DataError,
    ImageDataset,
    build_federated,
    evaluation_test_set,
    load_fashion_mnist,
    split_validation,
    validation_set,
)
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

N, NUM_CLASSES = 1200, 5


def indexed(n: int = N) -> ImageDataset:
    """Every image encodes its own index (pixels 0 and 1: index % 256, index // 256); test images
    count on from n, so any sample can be traced to where it came from."""
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, NUM_CLASSES, n))

    def images(first: int, count: int) -> torch.Tensor:
        idx = torch.arange(first, first + count)
        out = torch.zeros(count, 1, 2, 2, dtype=torch.uint8)
        out[:, 0, 0, 0], out[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
        return out

    return ImageDataset(
        name="indexed",
        train_images=images(0, n),
        train_labels=labels,
        test_images=images(n, 50),
        test_labels=labels[:50].clone(),
        num_classes=NUM_CLASSES,
    )


def ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


KNOBS = dict(
    num_clients=6, alpha=0.5, min_client_size=10, label_ratio=0.1, labeled_class_alpha=0.0, seed=3
)


def split(ds: ImageDataset, **overrides):
    """(clients, validation images, validation labels) of one configuration."""
    kw = {"partition": "dirichlet", **KNOBS, **overrides}
    fed = build_federated(ds, **kw)
    val = validation_set(
        ds,
        seed=kw["seed"],
        train_samples=kw.get("train_samples", 0),
        val_fraction=kw.get("val_fraction", 0.0),
    )
    return fed.clients, *val


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
@pytest.mark.parametrize("train_samples", [0, 700])
def test_validation_set_is_disjoint_from_every_client_and_the_test_set(partition, train_samples):
    ds = indexed()
    clients, val_images, val_labels = split(
        ds, partition=partition, train_samples=train_samples, val_fraction=0.1
    )
    val = ids(val_images)
    pool = train_samples or N
    assert len(val) == len(set(val)) == round(0.1 * pool)
    assert val_labels.tolist() == ds.train_labels[val].tolist()  # images and labels aligned
    held = set(val)
    seen: list[int] = []
    for c in clients:
        labeled, unlabeled = ids(c.labeled_images), ids(c.unlabeled_images)
        assert not held & set(labeled) and not held & set(unlabeled), c.client_id
        seen += labeled + unlabeled
    assert not held & set(ids(ds.test_images))
    assert len(seen) == len(set(seen)) == pool - len(val)  # the clients keep all the rest
    if train_samples:  # the subset is drawn first and is the same with or without validation
        alone, _, _ = split(ds, partition=partition, train_samples=train_samples)
        before = {i for c in alone for i in ids(c.labeled_images) + ids(c.unlabeled_images)}
        assert before == set(seen) | held


def test_validation_set_is_stratified_by_class():
    labels = np.repeat(np.arange(7), [3, 10, 41, 100, 257, 999, 1])
    for fraction in (0.05, 0.1, 0.37):
        val, rest = split_validation(labels, fraction=fraction, rng=np.random.default_rng(0))
        assert np.array_equal(np.sort(np.concatenate([val, rest])), np.arange(len(labels)))
        assert len(val) == round(fraction * len(labels))
        counts = np.bincount(labels[val], minlength=7)
        assert np.all(np.abs(counts - fraction * np.bincount(labels)) < 1), (fraction, counts)
    ds = indexed()
    _, _, val_labels = split(ds, val_fraction=0.05)
    per_class = np.bincount(ds.train_labels.numpy(), minlength=NUM_CLASSES)
    assert np.all(
        np.abs(np.bincount(val_labels.numpy(), minlength=NUM_CLASSES) - 0.05 * per_class) < 1
    )


def test_validation_set_is_seeded():
    ds = indexed()
    a = ids(split(ds, val_fraction=0.05)[1])
    assert a == ids(split(ds, val_fraction=0.05)[1])
    assert a != ids(split(ds, val_fraction=0.05, seed=4)[1])


def test_split_validation_rejects_a_fraction_outside_0_1():
    for fraction in (-0.1, 1.0):
        with pytest.raises(ValueError, match="0 <= fraction < 1"):
            split_validation(np.zeros(4, np.int64), fraction=fraction, rng=np.random.default_rng())


@pytest.mark.parametrize("value", [-0.01, 1.0, 1.5])
def test_val_fraction_outside_0_1_is_a_config_error(value):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"val_fraction": value}})
    assert str(err.value) == (
        f"data.val_fraction: must be in [0, 1) (0 = no validation set), got {value}"
    )


# The clients' data of three configurations as build_federated made them before validation
# existed (commit b067324): with val_fraction=0 they must stay exactly these.
BEFORE = {
    "iid": "3746dfd0ad9fc6fd",
    "dirichlet": "45e85e316b538d26",
    "subset": "72ffac5c431dc079",
}


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_val_fraction_0_keeps_every_client_as_before(case):
    overrides = {
        "iid": {"partition": "iid"},
        "dirichlet": {},
        "subset": {"train_samples": 700, "labeled_class_alpha": 0.5},
    }[case]
    clients, val_images, _ = split(indexed(), val_fraction=0.0, **overrides)
    drawn = repr([(ids(c.labeled_images), ids(c.unlabeled_images)) for c in clients])
    assert hashlib.sha256(drawn.encode()).hexdigest()[:16] == BEFORE[case]
    assert len(val_images) == 0


# clients.json of tiny_config(seed=0) before validation existed (commit b067324)
TINY_CLIENTS_BEFORE = "8e14b7aa"


def test_val_fraction_0_leaves_the_run_identical(tmp_path):
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    cfg = tiny_config(tmp_path, overrides=["data.val_fraction=0"])
    summary = fedlabel.run(cfg, progress=False)
    stats = (tmp_path / "run" / "clients.json").read_text()
    assert hashlib.sha256(stats.encode()).hexdigest()[:8] == TINY_CLIENTS_BEFORE
    assert sum(s["num_labeled"] + s["num_unlabeled"] for s in json.loads(stats)) == 2000
    assert summary["best_val_accuracy"] is None and summary["best_val_round"] is None
    assert all(r["val_accuracy"] is None and r["val_loss"] is None for r in summary["rounds"])
    fedlabel.run(tiny_config(tmp_path, name="default"), progress=False)  # val_fraction=0.05
    held = json.loads((tmp_path / "default" / "clients.json").read_text())
    assert sum(s["num_labeled"] + s["num_unlabeled"] for s in held) == 2000 - 100


def test_test_samples_evaluates_a_seeded_stratified_subset_of_the_test_split():
    ds = indexed()
    images, labels = evaluation_test_set(ds, seed=0, test_samples=0)
    assert ids(images) == list(range(N, N + 50))  # 0: the whole test split, as it is
    images, labels = evaluation_test_set(ds, seed=0, test_samples=20)
    picked = ids(images)
    assert len(picked) == 20 and picked == sorted(picked) and set(picked) <= set(range(N, N + 50))
    assert labels.tolist() == [ds.test_labels[i - N].item() for i in picked]
    counts = np.bincount(ds.test_labels.numpy(), minlength=NUM_CLASSES)
    kept = np.bincount(labels.numpy(), minlength=NUM_CLASSES)
    assert np.all(np.abs(kept - counts * 20 / 50) < 1)
    assert ids(evaluation_test_set(ds, seed=0, test_samples=20)[0]) == picked
    assert ids(evaluation_test_set(ds, seed=1, test_samples=20)[0]) != picked
    assert ids(evaluation_test_set(ds, seed=0, test_samples=500)[0]) == list(range(N, N + 50))


def test_negative_test_samples_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.test_samples: must be >= 0"):
        config_from_dict(tiny_config(tmp_path, overrides=["data.test_samples=-1"]))
