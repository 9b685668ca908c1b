"""A dishonest site among three, through a real in-process run (Fashion-MNIST shrunk, FedAvg, 3
rounds): with the defaults, and with aggregation.robust=median, its attack leaves the final test
loss within 1.5x of the run without it and no honest client is rejected. The same attack wrecks the
model with the cohort-relative bounds off (the defaults before issue 22), so the test can fail."""

import pytest

import fedlabel
from fedlabel.validation import COUNTERS
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

ATTACKER = 0
BASE = [
    "algorithm.name=fedavg",
    "data.num_clients=3",
    "clients_per_round=3",
    "rounds=3",
    f"faults.attack_client={ATTACKER}",
    "data.val_fraction=0",  # the clients' data as when these bounds were measured
]
ATTACKS = {
    "x100": ["faults.attack=scale", "faults.attack_scale=100"],
    "0.99 x bound": ["faults.attack=norm", "faults.attack_scale=0.99"],
    "1e9 weight": ["faults.attack=weight", "faults.attack_scale=1e9"],
}
OFF = ["aggregation.clip_to_median=0", "aggregation.weight_to_median=0"]


def _run(tmp_path, name: str, overrides: list[str]) -> dict:
    return fedlabel.run(
        tiny_config(tmp_path, algorithm="fedavg", name=name, overrides=[*BASE, *overrides]),
        progress=False,
    )


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("honest")
    return {
        rule: _run(tmp, rule, [] if rule == "defaults" else ["aggregation.robust=median"])
        for rule in ("defaults", "median")
    }


@pytest.mark.parametrize("rule", ["defaults", "median"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_one_dishonest_site_does_not_decide_the_model(tmp_path, honest, rule, attack):
    summary = _run(
        tmp_path,
        "attacked",
        ATTACKS[attack] + ([] if rule == "defaults" else ["aggregation.robust=median"]),
    )
    assert summary["status"] == "completed"
    assert summary["rounds"][-1]["loss"] <= 1.5 * honest[rule]["rounds"][-1]["loss"]
    for record in summary["rounds"]:
        assert [r["client"] for r in record["rejected"]] in (
            [],
            [ATTACKER],
        )  # never an honest client
        assert {1, 2} <= set(record["participants"])
        assert {b["client"] for b in record["bounded"]} == {
            ATTACKER
        }  # the attacker's influence was bounded


def test_without_the_cohort_bounds_the_attack_wrecks_the_model(tmp_path, honest):
    summary = _run(tmp_path, "unbounded", ATTACKS["x100"] + OFF)
    assert summary["rounds"][-1]["loss"] > 100 * honest["defaults"]["rounds"][-1]["loss"]


def test_absurd_counters_are_rejected_and_never_published(tmp_path):
    summary = _run(tmp_path, "counters", ["faults.attack=counters"])
    for record in summary["rounds"]:
        assert [(r["client"], r["reason"]) for r in record["rejected"]] == [(ATTACKER, COUNTERS)]
        assert record["participants"] == [1, 2] and abs(record["loss_labeled"]) < 100


def test_honest_run_without_a_bound_reached_is_bitwise_the_unbounded_run(tmp_path, honest):
    """The bounds change numbers only when they bound something (archived results stay valid)."""
    unbounded = _run(tmp_path, "unbounded", OFF)
    assert all(not r["bounded"] for r in honest["defaults"]["rounds"])
    keys = ("accuracy", "loss", "loss_labeled", "participants")
    assert [[r[k] for k in keys] for r in unbounded["rounds"]] == [
        [r[k] for k in keys] for r in honest["defaults"]["rounds"]
    ]
