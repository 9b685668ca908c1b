import numpy as np
import pytest
import torch

from fedlabel.data import (
    ClientData,
    DataError,
    FederatedData,
    ImageDataset,
    build_federated,
    federated,
    load_images,
)

NUM_CLASSES = 5


def synthetic(n: int = 600) -> ImageDataset:
    """Image i is filled with 10 * label + 1, so image/label alignment can be checked."""
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, NUM_CLASSES, n))
    images = (10 * labels + 1).to(torch.uint8).view(-1, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    return ImageDataset(
        name="synthetic",
        train_images=images,
        train_labels=labels,
        test_images=images[:50].clone(),
        test_labels=labels[:50].clone(),
        num_classes=NUM_CLASSES,
    )


def build(dataset: ImageDataset, **overrides) -> FederatedData:
    knobs = dict(
        num_clients=8,
        partition="dirichlet",
        alpha=0.5,
        min_client_size=10,
        label_ratio=0.1,
        labeled_class_alpha=0.0,
        seed=0,
    )
    return build_federated(dataset, **{**knobs, **overrides})


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
@pytest.mark.parametrize("class_alpha", [0.0, 0.5])
def test_build_federated_stats_consistent(partition, class_alpha):
    ds = synthetic()
    fed = build(ds, partition=partition, labeled_class_alpha=class_alpha)
    assert (fed.num_classes, fed.in_channels, fed.image_size) == (NUM_CLASSES, 1, 6)
    assert fed.test_images is ds.test_images
    stats = fed.client_stats()
    assert [s["client_id"] for s in stats] == list(range(8))
    assert sum(s["num_labeled"] + s["num_unlabeled"] for s in stats) == 600
    total = np.zeros(NUM_CLASSES, np.int64)
    for s, client in zip(stats, fed.clients):
        assert len(s["labeled_histogram"]) == len(s["unlabeled_histogram"]) == NUM_CLASSES
        assert sum(s["labeled_histogram"]) == s["num_labeled"] == len(client.labeled_images)
        assert sum(s["unlabeled_histogram"]) == s["num_unlabeled"] == len(client.unlabeled_images)
        assert s["num_labeled"] + s["num_unlabeled"] >= 10
        assert s["num_labeled"] == round(0.1 * (s["num_labeled"] + s["num_unlabeled"]))
        total += np.add(s["labeled_histogram"], s["unlabeled_histogram"])
        assert torch.equal(
            client.labeled_images[:, 0, 0, 0], (10 * client.labeled_labels + 1).to(torch.uint8)
        )
        assert torch.equal(
            client.unlabeled_images[:, 0, 0, 0],
            (10 * client.unlabeled_true_labels + 1).to(torch.uint8),
        )
        assert (
            client.labeled_images.dtype == torch.uint8
            and client.labeled_labels.dtype == torch.int64
        )
    assert total.tolist() == torch.bincount(ds.train_labels, minlength=NUM_CLASSES).tolist()


def sizes_and_labels(fed: FederatedData) -> list[tuple[list[int], list[int]]]:
    return [(c.labeled_labels.tolist(), c.unlabeled_true_labels.tolist()) for c in fed.clients]


def test_build_federated_deterministic_in_seed():
    ds = synthetic()
    assert sizes_and_labels(build(ds, seed=3)) == sizes_and_labels(build(ds, seed=3))
    assert sizes_and_labels(build(ds, seed=3)) != sizes_and_labels(build(ds, seed=4))


def test_partition_does_not_depend_on_labeled_split_knobs():
    ds = synthetic()
    a = [c.num_labeled + c.num_unlabeled for c in build(ds, label_ratio=0.1).clients]
    b = [
        c.num_labeled + c.num_unlabeled
        for c in build(ds, label_ratio=0.5, labeled_class_alpha=0.2).clients
    ]
    assert a == b


def test_build_federated_rejects_unknown_partition():
    with pytest.raises(ValueError, match="unknown partition 'shards'"):
        build(synthetic(), partition="shards")


def test_client_stats_without_ground_truth():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    client = ClientData(0, images[:1], torch.tensor([1]), images[1:], None)
    fed = FederatedData(
        [client], images, torch.tensor([0, 1, 1]), num_classes=3, in_channels=1, image_size=2
    )
    assert fed.client_stats() == [
        {
            "client_id": 0,
            "num_labeled": 1,
            "num_unlabeled": 2,
            "labeled_histogram": [0, 1, 0],
            "unlabeled_histogram": None,
        }
    ]
    with pytest.raises(DataError, match="client 4: 2 unlabeled images but 1 true labels"):
        ClientData(4, images[:1], torch.tensor([1]), images[1:], torch.tensor([0]))
    with pytest.raises(DataError, match="client 4: 1 labeled images but 2 labels"):
        ClientData(4, images[:1], torch.tensor([1, 0]), images[1:], None)


def dataset_with(**changes) -> None:
    ds = synthetic(20)
    fields = dict(
        name="x",
        train_images=ds.train_images,
        train_labels=ds.train_labels,
        test_images=ds.test_images,
        test_labels=ds.test_labels,
        num_classes=NUM_CLASSES,
    )
    ImageDataset(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_images": torch.zeros(20, 1, 6, 6)}, "train split: images must be uint8"),
        (
            {"test_images": torch.zeros(20, 6, 6, dtype=torch.uint8)},
            "test split: images must be uint8",
        ),
        ({"train_labels": torch.zeros(20, dtype=torch.int32)}, "labels must be int64"),
        ({"train_labels": torch.zeros(19, dtype=torch.int64)}, r"of shape \(20,\)"),
        ({"test_labels": torch.full((20,), NUM_CLASSES)}, r"outside \[0, 5\)"),
        ({"train_labels": torch.full((20,), -1)}, "labels span"),
        ({"test_images": torch.zeros(20, 3, 6, 6, dtype=torch.uint8)}, "train images are"),
        (
            {
                "train_images": torch.zeros(0, 1, 6, 6, dtype=torch.uint8),
                "train_labels": torch.zeros(0, dtype=torch.int64),
            },
            "empty",
        ),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_image_dataset_validation(changes, message):
    with pytest.raises(DataError, match=message):
        dataset_with(**changes)


def test_load_images_dispatch(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(federated, "load_fashion_mnist", lambda **kw: calls.append(kw) or "fm")
    assert load_images(name="fashion_mnist", root="r", cache_dir="c", download=False) == "fm"
    assert calls == [{"root": "r", "cache_dir": "c", "download": False}]

    path = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_images=rng.integers(0, 256, (4, 5, 5), dtype=np.uint8),
        train_labels=np.array([0, 1, 2, 1]),
        test_images=np.zeros((2, 5, 5), np.uint8),
        test_labels=np.array([0, 1]),
    )
    ds = load_images(name="npz", root=str(path), cache_dir="unused", download=True)
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == ("tiny", 3, 1, 5)

    with pytest.raises(DataError, match="needs data.root"):
        load_images(name="npz", root="", cache_dir="c", download=True)
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_images(name="cifar", root="", cache_dir="c", download=True)
