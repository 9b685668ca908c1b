"""End-to-end LLP runs on real (shrunk) Fashion-MNIST: both engines build the same bags."""

import pytest
import torch

import fedlabel
from tests.engines.conftest import (
    tiny_config,
)  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.slow


def bagged_config(
    tmp_path, *, engine="inprocess", algorithm="fedavg", name="run", overrides=(), **data
):
    cfg = tiny_config(tmp_path, engine=engine, algorithm=algorithm, name=name, overrides=overrides)
    cfg["data"].update(bag_size=8, **data)
    return cfg


@pytest.mark.parametrize("method", ["dllp", "bp"])
def test_two_rounds_with_bags_of_8(tmp_path, method):
    summary = fedlabel.run(bagged_config(tmp_path, llp_method=method), progress=False)
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss_labeled"] > 0 for r in summary["rounds"])
    assert all(
        r["proportion_epsilon"] is None for r in summary["rounds"]
    )  # exact proportions: no label-DP
    assert summary["config"]["data"]["llp_method"] == method


def test_fedlabel_unlabeled_branch_runs_on_top_of_noisy_bags(tmp_path):
    cfg = bagged_config(
        tmp_path, algorithm="fedlabel", proportion_epsilon=2.0, proportion_noise="gaussian"
    )
    summary = fedlabel.run(cfg, progress=False)
    assert summary["status"] == "completed"
    for r in summary["rounds"]:
        assert r["proportion_epsilon"] == pytest.approx(2.0)
        assert r["pseudo_label_coverage"] is not None and r["loss_unlabeled"] is not None


def test_flower_engine_trains_the_same_bags(tmp_path, shared_ray):
    cfg = bagged_config(
        tmp_path,
        engine="flower",
        name="flower",
        overrides=[shared_ray],
        llp_method="bp",
        proportion_epsilon=1.0,
    )
    flower = fedlabel.run(cfg, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # Flower's workers run clients with one thread (see tests/engines/test_flower.py)
    try:
        inproc = fedlabel.run(
            bagged_config(tmp_path, name="inproc", llp_method="bp", proportion_epsilon=1.0),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert flower["status"] == "completed"
    for f, i in zip(flower["rounds"], inproc["rounds"], strict=True):
        assert f["accuracy"] == i["accuracy"] and f["loss_labeled"] == pytest.approx(
            i["loss_labeled"], rel=1e-6
        )
        assert f["proportion_epsilon"] == i["proportion_epsilon"] == pytest.approx(1.0)
