import pytest

from fedlabel.algorithms import ALGORITHMS
from fedlabel.api import compose
from fedlabel.data import DataError, load_fashion_mnist


def tiny_config(
    tmp_path,
    *,
    engine: str = "inprocess",
    algorithm: str = "fedlabel",
    seed: int = 0,
    name: str = "run",
    overrides: list[str] = (),
) -> dict:
    """The `smoke` experiment (real Fashion-MNIST shrunk to 2,000 images over 4 clients, 2 rounds)
    with fewer local steps, composed by Hydra exactly as the CLI does."""
    fields = ALGORITHMS[algorithm].keys()
    steps = ["algorithm.local_steps=3"] + (
        ["algorithm.unlabeled_steps=3"] if "unlabeled_steps" in fields else []
    )
    return compose(
        [
            "experiment=smoke",
            f"engine={engine}",
            f"algorithm={algorithm}",
            *steps,
            f"seed={seed}",
            "device=cpu",
            f"output_dir={tmp_path / name}",
            *overrides,
        ]
    )


@pytest.fixture(scope="session", autouse=True)
def fashion_mnist_available():
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
