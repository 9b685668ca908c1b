"""FixMatch, as fedavg_fixmatch and fedprox_fixmatch (mu > 0): FixMatch (Sohn et al., "FixMatch:
Simplifying
Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020) as each client's local
training, aggregated by FedAvg over deltas (the FedLabel paper's "FedAvg/FedProx + FixMatch"
baselines, Table 3).

Each of the tau local steps, on the model being trained (w starts at the global model):
  loss = CE(f(w, weak(x_l)), y_l)                                       labeled batch, B samples
       + lambda_u * mean_u [ 1(max p_u > threshold) CE(f(w, strong(u)), argmax p_u) ]
                                                                         unlabeled batch, ratio*B
  with p_u = softmax(f(w, weak(u))) computed without gradient (FixMatch eq. 4), plus
  mu/2 ||w - w_global||^2 when mu > 0 (fedprox_fixmatch). Upload Delta = w - w_global.

Choices left open (by FixMatch in the federated setting, or by the FedLabel paper for its
baselines), as config values:
 - unlabeled_ratio=1 (FixMatch's mu, unlabeled batch = ratio x batch_size): FixMatch uses 7. With
   1, a round sees tau x 32 = 320 unlabeled samples, as many as FedLabel's unlabeled branch
   (tau' x 32), so the comparison is at equal unlabeled work per round; 7 costs ~4x more compute.
 - lambda_u=1.0, threshold=0.95: FixMatch's values (the mask keeps max p > threshold).
 - one joint step over a labeled and an unlabeled batch (FixMatch), not FedLabel's two
   branches; the labeled CE goes through the shared supervised branch (train_labeled), so
   FedProx's term and any labeled-loss variant apply to it unchanged.
 - weak view = the shared weak_shift translation (as on the labeled batches); strong view = the
   project's RandAugment (strong_num_ops=1 op at strong_magnitude=10 on the 0..30 scale of
   strong_magnitude_scale=30, a third of each op's range) + strong_cutout=10 cutout,
   the same psi FedLabel uses, so that methods differ in their losses, not their augmentations.
   FixMatch itself draws 2 ops at a random magnitude.
 - r_k = |D_L| + number of distinct unlabeled samples whose pseudo-label was kept at least once
   this round (FedLabel's convention: labeled samples plus unlabeled samples that trained).
 - metrics: num_unlabeled / num_kept / num_kept_correct count unlabeled rows drawn this round
   (a sample drawn twice counts twice), so pseudo_label_coverage is the share of drawn rows whose
   pseudo-label passed the threshold, and pseudo_label_accuracy their accuracy.
 - mu=0.01 for fedprox_fixmatch (see fedavg.py), 0 for fedavg_fixmatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar, cast

import torch
import torch.nn.functional as F

from fedlabel.algorithms.base import Algorithm, ClientUpdate
from fedlabel.algorithms.fedavg import FedAvgParams, train_labeled
from fedlabel.augment import check_strong_settings, strong_augment, weak_augment
from fedlabel.errors import check
from fedlabel.training import subtract, to_float


@dataclass(frozen=True)
class SemiSupervisedParams(FedAvgParams):
    """Shared by the FixMatch and UDA baselines (FedAvg's, with its mu, plus the unlabeled loss)."""

    lambda_u: float = 1.0  # weight of the unlabeled loss
    unlabeled_ratio: int = 1  # unlabeled batch = unlabeled_ratio x batch_size (FixMatch's mu)
    strong_num_ops: int = 1
    strong_magnitude: int = 10  # on the 0..strong_magnitude_scale scale
    strong_cutout: int = 10
    strong_magnitude_scale: int = 30  # 30: torchvision's scale, 10: Cubuk et al.'s (augment.py)

    def validate(self) -> None:
        super().validate()
        check(self.lambda_u >= 0, "algorithm.lambda_u", f"must be >= 0, got {self.lambda_u}")
        check(
            self.unlabeled_ratio >= 1,
            "algorithm.unlabeled_ratio",
            f"must be >= 1, got {self.unlabeled_ratio}",
        )
        check_strong_settings(
            self.strong_num_ops,
            self.strong_magnitude,
            self.strong_cutout,
            self.strong_magnitude_scale,
        )


@dataclass(frozen=True)
class FixMatchParams(SemiSupervisedParams):
    name: str = "fedavg_fixmatch"
    threshold: float = 0.95  # keep a pseudo-label when max softmax(weak) > threshold

    def validate(self) -> None:
        super().validate()
        check(
            0 <= self.threshold < 1,
            "algorithm.threshold",
            f"must be in [0, 1), got {self.threshold}",
        )


def fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, *, threshold: float):
    """FixMatch's unlabeled loss (eq. 4): mean over the batch of
    1(max softmax(weak) > threshold) CE(strong, argmax weak); the weak side carries no gradient.
    Returns (loss, keep mask, pseudo-labels)."""
    max_prob, pseudo = weak_logits.detach().softmax(dim=1).max(dim=1)
    keep = max_prob > threshold
    if len(keep) == 0:
        return strong_logits.sum() * 0.0, keep, pseudo
    return (F.cross_entropy(strong_logits, pseudo, reduction="none") * keep).mean(), keep, pseudo


# FixMatch is generic in its Params type: UDA (FixMatch[UdaParams]) shares its client update
S = TypeVar("S", bound=SemiSupervisedParams)


class FixMatch(Algorithm[S]):
    Params: ClassVar[type[SemiSupervisedParams]] = FixMatchParams
    trains_on_bags = True
    counts_unlabeled_per_step = True

    def unlabeled_loss(self, weak_logits: torch.Tensor, strong_logits: torch.Tensor):
        """(loss, keep mask, pseudo-labels) of one unlabeled batch; UDA overrides this."""
        p = cast(FixMatchParams, self.params)  # FixMatch's own params: UDA overrides this method
        return fixmatch_loss(weak_logits, strong_logits, threshold=p.threshold)

    def client_update(self, model, global_params, data, ctx, *, extras=None) -> ClientUpdate:
        p: SemiSupervisedParams = self.params
        device, generator = ctx.device, ctx.generator
        x_u = data.unlabeled_images.to(device)
        truth = (
            data.unlabeled_true_labels.to(device)
            if data.unlabeled_true_labels is not None
            else None
        )
        batches = ctx.batches(
            data.num_unlabeled, batch_size=p.unlabeled_ratio * p.batch_size, steps=p.local_steps
        )
        kept_once = torch.zeros(data.num_unlabeled, dtype=torch.bool, device=device)
        counts = {"num_unlabeled": 0, "num_kept": 0, "num_kept_correct": 0}
        loss_u = []

        def unlabeled_term(f, idx: torch.Tensor) -> torch.Tensor:
            idx = idx.to(device)
            clean = to_float(x_u[idx])
            weak = (
                weak_augment(clean, generator=generator, max_shift=p.weak_shift)
                if p.weak_shift
                else clean
            )
            strong = strong_augment(
                clean,
                generator=generator,
                num_ops=p.strong_num_ops,
                magnitude=p.strong_magnitude,
                cutout=p.strong_cutout,
                magnitude_scale=p.strong_magnitude_scale,
            )
            with torch.no_grad():
                weak_logits = f(weak)
            loss, keep, pseudo = self.unlabeled_loss(weak_logits, f(strong))
            kept_once[idx[keep]] = True
            counts["num_unlabeled"] += len(idx)
            counts["num_kept"] += int(keep.sum())
            if truth is not None:
                counts["num_kept_correct"] += int(((pseudo == truth[idx]) & keep).sum())
            loss_u.append(float(loss.detach()))
            return p.lambda_u * loss

        local, loss = train_labeled(
            model, global_params, data, p, ctx, mu=p.mu, extra=(batches, unlabeled_term)
        )
        steps = p.local_steps if (data.num_labeled or batches) else 0
        metrics = {"num_labeled": data.num_labeled, **counts}
        if truth is None:
            del metrics["num_kept_correct"]
        if data.num_labeled:  # the joint loss minus its unlabeled part, per step
            metrics["loss_labeled"] = loss - p.lambda_u * sum(loss_u) / max(steps, 1)
        if loss_u:
            metrics["loss_unlabeled"] = sum(loss_u) / len(loss_u)
        return ClientUpdate(
            client_id=data.client_id,
            deltas={"model": subtract(local, global_params)},
            weight=float(data.num_labeled + int(kept_once.sum())),
            metrics=metrics,
        )
