"""Server-side pieces shared by both engines: cohort sampling, seeding, metric pooling,
aggregation, and the run outputs."""

import json

import pytest
import torch

from fedlabel.algorithms import ClientUpdate
from fedlabel.algorithms.fedavg import FedAvg, FedAvgParams
from fedlabel.algorithms.fedlabel import FedLabel, FedLabelParams
from fedlabel.federation import client_generator, sample_cohort
from fedlabel.report import RunRecorder, format_table


def test_cohort_is_seeded_sorted_and_without_replacement():
    a = sample_cohort(seed=3, round=5, num_clients=100, clients_per_round=10)
    assert a == sample_cohort(seed=3, round=5, num_clients=100, clients_per_round=10)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= c < 100 for c in a)
    assert a != sample_cohort(seed=3, round=6, num_clients=100, clients_per_round=10)
    assert a != sample_cohort(seed=4, round=5, num_clients=100, clients_per_round=10)
    assert sample_cohort(seed=0, round=1, num_clients=7, clients_per_round=7) == list(range(7))


def test_client_generator_depends_on_seed_round_and_client_only():
    draw = lambda **kw: torch.rand(3, generator=client_generator(**kw))  # noqa: E731
    assert torch.equal(draw(seed=1, round=2, client_id=3), draw(seed=1, round=2, client_id=3))
    assert not torch.equal(draw(seed=1, round=2, client_id=3), draw(seed=1, round=2, client_id=4))
    assert not torch.equal(draw(seed=1, round=2, client_id=3), draw(seed=1, round=3, client_id=3))


def _update(cid, weight, **metrics):
    return ClientUpdate(
        client_id=cid,
        deltas={"model": {"w": torch.full((2,), float(cid))}},
        weight=weight,
        metrics=metrics,
    )


def test_pool_metrics_pools_counters_not_ratios():
    ups = [
        _update(
            0,
            10,
            num_unlabeled=100,
            num_kept=50,
            num_kept_global=10,
            num_kept_correct=40,
            num_kept_global_correct=5,
        ),
        _update(
            1,
            10,
            num_unlabeled=10,
            num_kept=10,
            num_kept_global=0,
            num_kept_correct=10,
            num_kept_global_correct=0,
        ),
    ]
    m = FedLabel(FedLabelParams()).pool_metrics(ups)
    assert m["pseudo_label_coverage"] == pytest.approx(60 / 110)
    assert m["pseudo_label_accuracy"] == pytest.approx(50 / 60)
    assert m["global_expert_share"] == pytest.approx(10 / 60)
    assert m["global_expert_accuracy"] == pytest.approx(5 / 10)
    assert m["local_expert_accuracy"] == pytest.approx(45 / 50)
    fedavg = FedAvg(FedAvgParams()).pool_metrics([_update(0, 3, num_labeled=3, loss_labeled=1.0)])
    assert fedavg["pseudo_label_coverage"] is None


def test_fedavg_aggregation_is_weighted_and_order_free():
    algo = FedAvg(FedAvgParams())
    w = {"w": torch.zeros(2)}
    ups = [_update(1, 1.0), _update(3, 3.0), _update(2, 0.0)]  # weight 0 is ignored
    new = algo.aggregate(w, ups)
    assert torch.allclose(new["w"], torch.full((2,), (1 * 1 + 3 * 3) / 4))
    assert torch.equal(new["w"], algo.aggregate(w, list(reversed(ups)))["w"])
    assert torch.equal(algo.aggregate(w, [_update(5, 0.0)])["w"], w["w"])


def test_recorder_writes_summary_after_every_round(tmp_path):
    rec = RunRecorder(tmp_path, config={"algorithm": {"name": "x"}}, total_rounds=2, progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"
    rec.log_round({"round": 1, "accuracy": 0.5, "loss": float("nan")})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["rounds"] == [{"round": 1, "accuracy": 0.5, "loss": None}]
    summary = rec.finish(error="RuntimeError: boom")
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: boom"
    assert summary["final_accuracy"] == 0.5
    assert "0.5000" in format_table(summary["rounds"])
