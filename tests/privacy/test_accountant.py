"""The privacy ledger: composition per party and its checkpointable state."""

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedlabel.privacy.accountant import PrivacyLedger, epsilon, merge


def test_merge_combines_equal_mechanisms():
    assert merge([(1.0, 0.1, 3)], [(1.0, 0.1, 2), (1.0, 0.2, 1)]) == [(1.0, 0.1, 5), (1.0, 0.2, 1)]


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_of_a_history_equals_opacus_step_by_step(kind):
    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for z, q, s in [(1.0, 0.1, 7), (0.7, 0.3, 4)]:
        for _ in range(s):
            acc.step(noise_multiplier=z, sample_rate=q)
    ours = epsilon([(1.0, 0.1, 7), (0.7, 0.3, 4)], delta=1e-6, accountant=kind)
    assert ours == pytest.approx(acc.get_epsilon(delta=1e-6), rel=1e-12)
    assert epsilon([], delta=1e-6, accountant=kind) == 0.0


def test_ledger_state_survives_json_round_trip():
    ledger = PrivacyLedger(delta=1e-5)
    ledger.record(3, [(1.0, 0.2, 10)])
    ledger.record(5, [(1.0, 0.1, 10)])
    ledger.record(3, [(1.0, 0.2, 10), (1.0, 0.05, 4)])
    restored = PrivacyLedger(delta=1e-5)
    restored.load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert restored.epsilons() == ledger.epsilons()
    assert restored.max_epsilon() == ledger.epsilons()["3"] > ledger.epsilons()["5"]
    with pytest.raises(ValueError, match="delta=1e-05"):
        PrivacyLedger(delta=1e-6).load_state_dict(ledger.state_dict())
