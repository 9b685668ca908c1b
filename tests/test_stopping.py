"""The early-stopping rule (stop.patience, stop.target_accuracy) on hand-made round records."""

from fedlabel.stopping import stop_reason


def _rounds(*accuracies):
    return [{"round": i, "accuracy": a} for i, a in enumerate(accuracies, start=1)]


def test_target_accuracy_stops_once_reached():
    assert stop_reason(_rounds(0.5, 0.79), patience=0, target_accuracy=0.8) is None
    reason = stop_reason(_rounds(0.5, 0.79, 0.8), patience=0, target_accuracy=0.8)
    assert reason == "accuracy 0.8000 at round 3 reached stop.target_accuracy=0.8"


def test_patience_counts_rounds_since_the_first_best():
    assert (
        stop_reason(_rounds(0.5, 0.6, 0.6), patience=2, target_accuracy=0) is None
    )  # a tie is no improvement
    reason = stop_reason(_rounds(0.5, 0.6, 0.6, 0.55), patience=2, target_accuracy=0)
    assert reason == "no accuracy above 0.6000 (round 2) in 2 rounds (stop.patience=2)"
    assert stop_reason(_rounds(0.5, 0.6, 0.6, 0.7), patience=2, target_accuracy=0) is None


def test_only_evaluated_rounds_and_zero_settings_never_stop():
    rounds = _rounds(0.6, None, None, 0.5)
    assert (
        stop_reason(rounds, patience=3, target_accuracy=0) is not None
    )  # round 4 is 3 rounds after round 1
    assert (
        stop_reason(rounds[:3], patience=1, target_accuracy=0) is None
    )  # round 3 was not evaluated
    assert stop_reason(_rounds(0.9, 0.1, 0.1), patience=0, target_accuracy=0) is None
    assert stop_reason([], patience=1, target_accuracy=0.5) is None


def test_a_run_with_a_validation_set_stops_on_it_not_on_the_test_set():
    rounds = [
        {"round": i, "accuracy": a, "val_accuracy": v}
        for i, (a, v) in enumerate([(0.5, 0.5), (0.9, 0.6), (0.95, 0.7)], start=1)
    ]
    assert stop_reason(rounds, patience=0, target_accuracy=0.8) is None  # test 0.95, val 0.7
    assert stop_reason(
        rounds[:2] + [{**rounds[2], "val_accuracy": 0.6}], patience=1, target_accuracy=0
    ) == ("no validation accuracy above 0.6000 (round 2) in 1 rounds (stop.patience=1)")
