"""10,000 simulated clients on one machine: the partition holds each sample once (client tensors
are the data set cut into pieces, no copies per client), a client costs a small fixed amount of
Python objects beyond that, and a run touches only each round's cohort."""

import tracemalloc

import numpy as np
import torch

import fedlabel
from fedlabel.data import ImageDataset, build_federated

NUM_CLIENTS = 10_000


def _arrays(n_train: int = 20_000, n_test: int = 500, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test),
    }


def _dataset(arrays: dict[str, np.ndarray]) -> ImageDataset:
    return ImageDataset(
        name="synthetic",
        train_images=torch.from_numpy(arrays["train_images"][:, None]),
        train_labels=torch.from_numpy(arrays["train_labels"]).long(),
        test_images=torch.from_numpy(arrays["test_images"][:, None]),
        test_labels=torch.from_numpy(arrays["test_labels"]).long(),
        num_classes=10,
    )


def _partition(dataset: ImageDataset, num_clients: int):
    return build_federated(
        dataset,
        num_clients=num_clients,
        partition="iid",
        alpha=1.0,
        min_client_size=1,
        label_ratio=0.5,
        labeled_class_alpha=0.0,
        seed=0,
    )


def test_partition_holds_each_sample_once_plus_a_small_cost_per_client():
    dataset = _dataset(_arrays())
    fed = _partition(dataset, NUM_CLIENTS)
    assert len(fed.clients) == NUM_CLIENTS
    image_bytes = sum(t.nbytes for c in fed.clients for t in (c.labeled_images, c.unlabeled_images))
    assert (
        image_bytes == dataset.train_images.nbytes
    )  # every sample in exactly one client, no padding or copies
    # Python objects per client (ClientData, tensor wrappers, index arrays), from 1,000 to 10,000
    # clients
    per_client = []
    for n in (1_000, NUM_CLIENTS):
        tracemalloc.start()
        fed = _partition(dataset, n)
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        per_client.append(current / n)
        del fed
    assert max(per_client) < 2048, (
        per_client
    )  # bytes of Python objects per client (about 480 measured)
    assert per_client[1] < 1.5 * per_client[0], (
        per_client
    )  # flat: no cost growing with the client count


def test_ten_thousand_clients_run_in_process(tmp_path):
    path = tmp_path / "synthetic.npz"
    np.savez(path, **_arrays())
    summary = fedlabel.run(
        {
            "algorithm": {"name": "fedavg", "local_steps": 2, "batch_size": 4},
            "data": {
                "name": "npz",
                "root": str(path),
                "num_clients": NUM_CLIENTS,
                "partition": "iid",
                "min_client_size": 1,
                "label_ratio": 0.5,
            },
            "engine": {"name": "inprocess"},
            "rounds": 2,
            "clients_per_round": 10,
            "device": "cpu",
            "output_dir": str(tmp_path / "run"),
        },
        progress=False,
    )
    assert summary["status"] == "completed"
    assert [r["clients"] for r in summary["rounds"]] == [10, 10]
    assert all(0 <= r["accuracy"] <= 1 for r in summary["rounds"])
