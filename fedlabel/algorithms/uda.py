"""UDA, as fedavg_uda and fedprox_uda (mu > 0): Unsupervised Data Augmentation (Xie et al.,
"Unsupervised
Data Augmentation for Consistency Training", NeurIPS 2020) as each client's local training,
aggregated by FedAvg over deltas (the FedLabel paper's "FedAvg/FedProx + UDA" baselines).

The same joint local step as fixmatch.py (one labeled and one unlabeled batch per step, the
labeled CE through the shared supervised branch, FedProx's term when mu > 0); only the
unlabeled loss differs:
  mean_u [ 1(max softmax(f(weak(u))) > mask_threshold)
           KL( softmax(f(weak(u)) / temperature) || softmax(f(strong(u))) ) ]
with the weak side computed without gradient (UDA's sharpened, confidence-masked consistency).

Choices left open, as config values (defaults and why):
 - temperature=0.4, mask_threshold=0.8: UDA's released CIFAR-10 settings (softmax temperature
   and confidence mask); the mask is taken on the unsharpened prediction, as UDA does. The key is
   mask_threshold, not FixMatch's threshold, because the two defaults differ.
 - the "original" input of UDA is the weak view (the shared weak_shift translation), as the
   FedLabel paper describes the baseline ("KL between weak and strong views").
 - training signal annealing (TSA) on the labeled loss is not used: UDA reports it helps mainly
   when labeled data is tiny relative to model size, and the FedLabel paper does not mention it.
 - unlabeled_ratio=1, lambda_u=1.0, strong view, r_k and metric counters: as fixmatch.py
   (UDA uses a larger unlabeled batch; 1 keeps the unlabeled work equal to FedLabel's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedlabel.algorithms.fixmatch import FixMatch, SemiSupervisedParams
from fedlabel.errors import check


@dataclass(frozen=True)
class UdaParams(SemiSupervisedParams):
    name: str = "fedavg_uda"
    temperature: float = 0.4  # sharpening of the weak-view target (< 1 sharpens)
    mask_threshold: float = 0.8  # keep a sample when max softmax(weak) > mask_threshold

    def validate(self) -> None:
        super().validate()
        check(self.temperature > 0, "algorithm.temperature", f"must be > 0, got {self.temperature}")
        check(
            0 <= self.mask_threshold < 1,
            "algorithm.mask_threshold",
            f"must be in [0, 1), got {self.mask_threshold}",
        )


def uda_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, *, temperature: float, threshold: float
):
    """UDA's consistency loss: mean over the batch of
    1(max softmax(weak) > threshold) KL(softmax(weak / temperature) || softmax(strong)),
    the weak side without gradient. Returns (loss, keep mask, argmax of weak)."""
    weak = weak_logits.detach()
    max_prob, pseudo = weak.softmax(dim=1).max(dim=1)
    keep = max_prob > threshold
    if len(keep) == 0:
        return strong_logits.sum() * 0.0, keep, pseudo
    target = (weak / temperature).softmax(dim=1)
    kl = (target * (target.clamp_min(1e-12).log() - strong_logits.log_softmax(dim=1))).sum(dim=1)
    return (kl * keep).mean(), keep, pseudo


class Uda(FixMatch[UdaParams]):
    Params = UdaParams

    def unlabeled_loss(self, weak_logits, strong_logits):
        return uda_loss(
            weak_logits,
            strong_logits,
            temperature=self.params.temperature,
            threshold=self.params.mask_threshold,
        )
