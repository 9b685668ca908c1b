"""End-to-end run of the in-process engine on real (shrunk) Fashion-MNIST."""

import json

import torch

import fedlabel
from tests.engines.conftest import tiny_config

METRICS = [
    "round",
    "accuracy",
    "loss",
    "pseudo_label_coverage",
    "pseudo_label_accuracy",
    "global_expert_share",
    "loss_labeled",
    "loss_unlabeled",
    "clients",
]


def _metrics(summary):
    return [{k: r[k] for k in METRICS} for r in summary["rounds"]]


def test_run_writes_every_output(tmp_path):
    summary = fedlabel.run(tiny_config(tmp_path), progress=False)
    out = tmp_path / "run"
    assert summary["status"] == "completed"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert summary["final_accuracy"] == summary["rounds"][-1]["accuracy"]
    assert summary["config"]["data"]["num_clients"] == 4 and summary["wall_seconds"] > 0
    for r in summary["rounds"]:
        assert r["clients"] == 2
        assert 0 <= r["pseudo_label_coverage"] <= 1
    assert (out / "rounds.csv").read_text().count("\n") == 3
    assert (out / "accuracy.png").stat().st_size > 0
    stats = json.loads((out / "clients.json").read_text())
    # the 2,000 images less the 5% validation set (data.val_fraction) the server holds
    assert sum(s["num_labeled"] + s["num_unlabeled"] for s in stats) == 1900
    assert (out / "reliability.png").stat().st_size > 0
    assert set(torch.load(out / "model.pt")) == {n for n, _ in _model_params()}


def _model_params():
    from fedlabel.models import SmallCNN

    return SmallCNN().named_parameters()


def test_same_seed_same_metrics_and_model(tmp_path):
    a = fedlabel.run(tiny_config(tmp_path, name="a"), progress=False)
    b = fedlabel.run(tiny_config(tmp_path, name="b"), progress=False)
    assert _metrics(a) == _metrics(b)
    ma, mb = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_other_seed_other_run(tmp_path):
    a = fedlabel.run(tiny_config(tmp_path, name="a"), progress=False)
    c = fedlabel.run(tiny_config(tmp_path, name="c", seed=1), progress=False)
    assert _metrics(a) != _metrics(c)


def test_fedavg_reports_no_pseudo_label_metrics(tmp_path):
    summary = fedlabel.run(tiny_config(tmp_path, algorithm="fedavg"), progress=False)
    assert all(
        r["pseudo_label_coverage"] is None and r["global_expert_share"] is None
        for r in summary["rounds"]
    )


def test_eval_every_and_eval_last_pick_the_evaluated_rounds(tmp_path):
    cfg = tiny_config(
        tmp_path, algorithm="fedavg", overrides=["rounds=6", "eval_every=4", "eval_last=2"]
    )
    summary = fedlabel.run(cfg, progress=False)
    assert [r["round"] for r in summary["rounds"] if r["accuracy"] is not None] == [4, 5, 6]
