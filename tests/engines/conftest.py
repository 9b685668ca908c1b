import pytest

from fedlabel.data import DataError, load_fashion_mnist


def tiny_config(tmp_path, *, engine: str = "inprocess", algorithm: str = "fedlabel", seed: int = 0, name: str = "run") -> dict:
    """A real Fashion-MNIST run shrunk to seconds: 2,000 training images over 4 clients."""
    return {
        "algorithm": {"name": algorithm, "local_steps": 3, **({"unlabeled_steps": 3} if algorithm == "fedlabel" else {})},
        "data": {"num_clients": 4, "train_samples": 2000, "alpha": 0.5, "label_ratio": 0.1},
        "engine": {"name": engine},
        "rounds": 2,
        "clients_per_round": 2,
        "seed": seed,
        "device": "cpu",
        "output_dir": str(tmp_path / name),
    }


@pytest.fixture(scope="session", autouse=True)
def fashion_mnist_available():
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
