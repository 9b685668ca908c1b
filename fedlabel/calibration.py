"""Calibration of a classifier's confidence: expected calibration error (ECE) and the bins of a
reliability diagram (Guo et al., On Calibration of Modern Neural Networks, ICML 2017).

A prediction's confidence is its largest softmax probability. The interval [0, 1] is cut into
``bins`` equal-width bins, bin b holding the confidences in (b / bins, (b + 1) / bins] (0 falls
in the first). ECE = sum over bins of n_b / N * |accuracy_b - mean confidence_b|: 0 when, in
every bin, the share of correct predictions equals their mean confidence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BINS = 15


@dataclass(frozen=True)
class Reliability:
    """Per bin: predictions, their summed confidence and their number correct."""

    counts: tuple[int, ...]
    confidence_sums: tuple[float, ...]
    correct_sums: tuple[float, ...]

    @property
    def ece(self) -> float:
        """Expected calibration error: sum_b |correct_b - confidence_b| / N (= sum_b n_b / N *
        |accuracy_b - mean confidence_b|)."""
        gaps = sum(abs(h - c) for h, c in zip(self.correct_sums, self.confidence_sums))
        return gaps / sum(self.counts)

    def accuracy(self) -> list[float | None]:
        """Share correct per bin (None: empty bin)."""
        return [h / n if n else None for h, n in zip(self.correct_sums, self.counts)]

    def mean_confidence(self) -> list[float | None]:
        """Mean confidence per bin (None: empty bin)."""
        return [c / n if n else None for c, n in zip(self.confidence_sums, self.counts)]


def reliability(confidences, correct, *, bins: int = BINS) -> Reliability:
    """The bins of ``confidences`` (in [0, 1]) and ``correct`` (bool or 0/1), one per
    prediction. ValueError for no predictions, mismatched lengths or confidences outside
    [0, 1]."""
    conf = torch.as_tensor(confidences, dtype=torch.float64).flatten().cpu()
    hit = torch.as_tensor(correct, dtype=torch.float64).flatten().cpu()
    if len(conf) == 0 or len(conf) != len(hit) or bins < 1:
        raise ValueError(
            f"need as many confidences as correct flags, at least one, and bins >= 1; got"
            f" {len(conf)} and {len(hit)}, bins={bins}"
        )
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError(f"confidences must lie in [0, 1], got [{conf.min()}, {conf.max()}]")
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.bucketize(conf, edges[1:-1])  # bin b: (edges[b], edges[b + 1]]
    zeros = torch.zeros(bins, dtype=torch.float64)
    return Reliability(
        counts=tuple(torch.bincount(index, minlength=bins).tolist()),
        confidence_sums=tuple(zeros.index_add(0, index, conf).tolist()),
        correct_sums=tuple(zeros.index_add(0, index, hit).tolist()),
    )


def expected_calibration_error(confidences, correct, *, bins: int = BINS) -> float:
    """ECE of predictions with these confidences and correctness (see the module docstring)."""
    return reliability(confidences, correct, bins=bins).ece


def logits_reliability(
    logits: torch.Tensor, labels: torch.Tensor, *, bins: int = BINS
) -> Reliability:
    """The bins of a classifier's N x C ``logits`` against the true ``labels``: each
    prediction's confidence is its largest softmax probability, correct when its class (argmax)
    is the label."""
    confidence = logits.float().softmax(dim=1).amax(dim=1)
    return reliability(confidence, logits.argmax(1) == labels.to(logits.device), bins=bins)
