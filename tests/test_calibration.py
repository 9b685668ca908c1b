"""Expected calibration error (fedlabel.calibration) by hand, and in a run's outputs."""

import csv
import json

import pytest
import torch

import fedlabel
from fedlabel.calibration import (
    BINS,
    expected_calibration_error,
    logits_reliability,
    reliability,
)
from fedlabel.data import DataError, load_fashion_mnist
from fedlabel.report import format_table
from tests.engines.conftest import tiny_config

# Five predictions, 15 bins of width 1/15 (bin b holds (b/15, (b+1)/15]):
#   0.95, 0.95 -> bin 14 (0.933, 1];     1 of 2 correct: |0.5 - 0.95| = 0.45, weight 2/5
#   0.62       -> bin 9  (0.6, 0.667];   correct:        |1 - 0.62|   = 0.38, weight 1/5
#   0.58       -> bin 8  (0.533, 0.6];   wrong:          |0 - 0.58|   = 0.58, weight 1/5
#   0.25       -> bin 3  (0.2, 0.267];   wrong:          |0 - 0.25|   = 0.25, weight 1/5
# ECE = (2 * 0.45 + 0.38 + 0.58 + 0.25) / 5 = 2.11 / 5 = 0.422.
# Were 0.62 and 0.58 in one bin (accuracy 0.5, mean confidence 0.6), the ECE would be
# (0.9 + 2 * 0.1 + 0.25) / 5 = 0.27; with a single bin (accuracy 2/5, mean confidence
# 3.35/5 = 0.67) it is |0.4 - 0.67| = 0.27.
CONFIDENCES = [0.95, 0.95, 0.62, 0.58, 0.25]
CORRECT = [True, False, True, False, False]


def test_ece_of_a_hand_checked_example():
    assert BINS == 15
    assert expected_calibration_error(CONFIDENCES, CORRECT) == pytest.approx(0.422)
    assert expected_calibration_error(CONFIDENCES, CORRECT, bins=1) == pytest.approx(0.27)
    bins = reliability(CONFIDENCES, CORRECT)
    assert [b for b, n in enumerate(bins.counts) if n] == [3, 8, 9, 14]
    assert bins.counts[14] == 2 and sum(bins.counts) == 5
    assert bins.accuracy()[14] == 0.5 and bins.mean_confidence()[14] == pytest.approx(0.95)
    assert bins.accuracy()[0] is None


def test_perfect_calibration_gives_0():
    # bin 7 (0.467, 0.533]: 0.5 twice, one correct; bin 14: 1.0 three times, all correct
    assert expected_calibration_error([0.5, 0.5, 1.0, 1.0, 1.0], [1, 0, 1, 1, 1]) == 0
    assert expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == 0


def test_edges_of_the_confidence_range():
    assert reliability([0.0, 1.0], [0, 1]).counts == (1,) + (0,) * 13 + (1,)
    for confidences, correct in (([], []), ([0.5], [1, 0]), ([1.2], [1]), ([-0.1], [0])):
        with pytest.raises(ValueError):
            reliability(confidences, correct)


def test_reliability_of_logits_uses_the_softmax_maximum_and_the_argmax():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.25, 0.75], [0.45, 0.55]]))
    bins = logits_reliability(logits, torch.tensor([0, 0, 1]))
    # 0.9 correct (bin 13), 0.75 wrong (bin 11), 0.55 correct (bin 8):
    # (0.1 + 0.75 + 0.45) / 3
    assert bins.ece == pytest.approx(1.3 / 3)
    assert [b for b, n in enumerate(bins.counts) if n] == [8, 11, 13]


def test_a_run_records_validation_and_calibration(tmp_path):
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    summary = fedlabel.run(
        tiny_config(tmp_path, overrides=["rounds=3", "eval_every=2"]), progress=False
    )
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text()) == summary
    rounds = summary["rounds"]
    assert [r["val_accuracy"] is not None for r in rounds] == [False, True, True]
    for r in rounds:
        keys = ("accuracy", "loss", "ece", "val_accuracy", "val_loss")
        if r["accuracy"] is None:
            assert all(r[k] is None for k in keys)
            continue
        assert 0 <= r["val_accuracy"] <= 1 and r["val_loss"] > 0
        assert 0 <= r["ece"] <= 1
        assert r["val_accuracy"] * 100 == pytest.approx(round(r["val_accuracy"] * 100))  # of 100
    best = max(rounds[1:], key=lambda r: r["val_accuracy"])
    assert summary["best_val_accuracy"] == best["val_accuracy"]
    assert summary["best_val_round"] == best["round"]
    assert summary["ece"] == rounds[-1]["ece"]
    with open(out / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(row["ece"]) for row in rows[1:]] == [r["ece"] for r in rounds[1:]]
    assert float(rows[2]["val_loss"]) == rounds[2]["val_loss"] and rows[0]["val_loss"] == ""
    assert (out / "reliability.png").stat().st_size > 0
    heads = format_table(rounds).splitlines()[0].split()
    assert heads[:5] == ["round", "accuracy", "loss", "val_acc", "ece"]
