"""Privacy end to end on real (shrunk) Fashion-MNIST: the epsilon in summary.json and rounds.csv
against Opacus's accountant replayed from the cohorts, and both engines giving the same epsilon."""

import csv

import pytest
import torch
from opacus.accountants import RDPAccountant

import fedlabel
from fedlabel.config import config_from_dict
from fedlabel.federation import load_federated, sample_cohort
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow


def _private(tmp_path, run, *, engine="inprocess", overrides=(), **privacy):
    cfg = tiny_config(tmp_path, engine=engine, algorithm="fedavg", name=run, overrides=overrides)
    cfg["privacy"].update(privacy)
    return cfg


def test_dpsgd_epsilon_per_round_is_max_over_clients_of_opacus_accounting(tmp_path):
    values = _private(tmp_path, "dp", name="dpsgd", noise_multiplier=0.9, max_grad_norm=1.0)
    summary = fedlabel.run(values, progress=False)
    cfg = config_from_dict(values)
    fed = load_federated(cfg)
    accountants: dict[int, RDPAccountant] = {}
    for r, record in enumerate(summary["rounds"], start=1):
        for cid in sample_cohort(
            seed=cfg.seed,
            round=r,
            num_clients=cfg.data.num_clients,
            clients_per_round=cfg.clients_per_round,
        ):
            n = fed.clients[cid].num_labeled
            acc = accountants.setdefault(cid, RDPAccountant())
            for _ in range(cfg.algorithm.local_steps if n else 0):
                acc.step(noise_multiplier=0.9, sample_rate=min(1.0, cfg.algorithm.batch_size / n))
        expected = max(a.get_epsilon(delta=1e-5) for a in accountants.values() if a.history)
        assert record["epsilon"] == pytest.approx(expected, rel=1e-9)
    per_client = summary["privacy"]["client_epsilon"]
    assert per_client == pytest.approx(
        {str(c): a.get_epsilon(delta=1e-5) for c, a in accountants.items() if a.history}, rel=1e-9
    )
    with open(tmp_path / "dp" / "rounds.csv") as fh:
        assert [float(row["epsilon"]) for row in csv.DictReader(fh)] == [
            r["epsilon"] for r in summary["rounds"]
        ]


def test_flower_engine_gives_the_same_epsilon(tmp_path, shared_ray):
    """Central DP with client-side clipping runs Flower's fixedclipping_mod on the Flower engine.
    The epsilon must match the in-process engine round for round, and so must the accuracy (same
    seeds, same noise, one thread; the clipped update passes through w + Delta, so not bitwise)."""
    privacy = {"name": "central_dp", "clipping": "client"}
    flower = fedlabel.run(
        _private(tmp_path, "flower", engine="flower", overrides=[shared_ray], **privacy),
        progress=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inproc = fedlabel.run(_private(tmp_path, "inproc", **privacy), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert flower["status"] == "completed"
    assert [r["epsilon"] for r in flower["rounds"]] == [r["epsilon"] for r in inproc["rounds"]]
    assert all(r["epsilon"] > 0 for r in flower["rounds"])
    assert flower["privacy"] == inproc["privacy"]
    for f, i in zip(flower["rounds"], inproc["rounds"], strict=True):
        assert f["accuracy"] == pytest.approx(i["accuracy"], abs=2e-3)


def test_resumed_run_keeps_the_accountant_history(tmp_path):
    """The per-client privacy history is server state: a run resumed from its checkpoint reports
    the same epsilons as one that never stopped."""
    whole = fedlabel.run({**_private(tmp_path, "whole", name="dpsgd"), "rounds": 2}, progress=False)
    cfg = {**_private(tmp_path, "split", name="dpsgd"), "rounds": 1}
    fedlabel.run(cfg, progress=False)
    resumed = fedlabel.run({**cfg, "rounds": 2, "resume": True}, progress=False)
    assert [r["epsilon"] for r in resumed["rounds"]] == [r["epsilon"] for r in whole["rounds"]]
    assert resumed["privacy"] == whole["privacy"]
