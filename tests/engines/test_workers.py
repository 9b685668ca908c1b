"""engine.workers=N: the same run as one process, client for client (at equal thread counts)."""

import pytest
import torch

import fedlabel
from fedlabel.engines.workers import assign_by_work
from tests.engines.conftest import tiny_config


def test_clients_go_largest_first_to_the_least_loaded_worker():
    assert assign_by_work({0: 5, 1: 9, 2: 4, 3: 4, 4: 1}, 2) == [
        [1, 3],
        [0, 2, 4],
    ]  # loads 9, 9+4 vs 5, 5+4, 9+1
    assert assign_by_work({7: 1.0}, 3) == [[7], [], []]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # workers=2 on this process's threads gives each worker one
    yield
    torch.set_num_threads(before)


def test_two_workers_equal_one_process(tmp_path, one_thread):
    one = fedlabel.run(tiny_config(tmp_path, name="one"), progress=False)
    two = fedlabel.run(
        tiny_config(tmp_path, name="two", overrides=["engine.workers=2"]), progress=False
    )
    strip = lambda s: [{k: v for k, v in r.items() if k != "seconds"} for r in s["rounds"]]  # noqa: E731
    assert strip(one) == strip(two)
    a, b = torch.load(tmp_path / "one" / "model.pt"), torch.load(tmp_path / "two" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
