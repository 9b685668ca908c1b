"""Every baseline runs 2 tiny rounds on both engines, and the two engines agree exactly
(same client code and seeds, one torch thread on both sides; see test_flower.py)."""

import pytest
import torch

import fedlabel
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

SEMI_SUPERVISED = [
    "fedavg_fixmatch",
    "fedprox_fixmatch",
    "fedavg_uda",
    "fedprox_uda",
    "fedlabel_local_only",
    "fedlabel_global_only",
]


@pytest.mark.parametrize("algorithm", ["fedprox", *SEMI_SUPERVISED])
def test_runs_on_both_engines_and_they_agree(tmp_path, shared_ray, algorithm):
    cfg = tiny_config(
        tmp_path, engine="flower", algorithm=algorithm, name="flower", overrides=[shared_ray]
    )
    flower = fedlabel.run(cfg, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inproc = fedlabel.run(
            tiny_config(tmp_path, engine="inprocess", algorithm=algorithm, name="inproc"),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    for summary in (flower, inproc):
        assert (
            summary["status"] == "completed" and summary["config"]["algorithm"]["name"] == algorithm
        )
        assert [r["round"] for r in summary["rounds"]] == [1, 2]
        assert 0.0 <= summary["final_accuracy"] <= 1.0
    for f, i in zip(flower["rounds"], inproc["rounds"], strict=True):
        assert f["clients"] == i["clients"] == 2
        for key in (
            "accuracy",
            "pseudo_label_coverage",
            "pseudo_label_accuracy",
            "global_expert_share",
            "loss_labeled",
        ):
            assert f[key] == i[key], key
        if algorithm in SEMI_SUPERVISED:  # the pseudo-label counters reach the pooled metrics
            assert 0 <= f["pseudo_label_coverage"] <= 1 and f["loss_unlabeled"] is not None
        else:
            assert f["pseudo_label_coverage"] is None
    if algorithm == "fedlabel_global_only":
        assert all(r["global_expert_share"] in (1.0, None) for r in flower["rounds"])
    if algorithm == "fedlabel_local_only":
        assert all(r["global_expert_share"] in (0.0, None) for r in flower["rounds"])
