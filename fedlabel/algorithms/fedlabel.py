"""FedLabel: selective knowledge assimilation (Cho, Joshi, Dimitriadis, ICCV 2023, Algorithm 1).

Per round, client k:
 1. supervised branch: w_L <- w, tau SGD steps of cross-entropy on labeled batches;
 2. expert choice: for every unlabeled x, the frozen global model w and the local model w_L
    both predict; the one with the higher confidence h is the expert s*, the other s-;
 3. threshold: y_hat = argmax s*, kept iff max softmax(s*) > beta;
 4. unlabeled branch: w_U <- w, tau' SGD steps on
        F_U = mean_x [ CE(f(w_U, psi(x)), y_hat) 1(kept)
                       + lambda(x) KL(s- || f(w_U, .)) 1(kept and argmax s- == y_hat) ],
    lambda(x) = lambda0 h(s-) / h(s*)  (<= lambda0 since s* is the more confident);
 5. upload Delta_L + Delta_U and r_k = |D_L| + #kept. Server: w + sum_k r_k/sum r Delta_k.

Choices the paper leaves open, as config values (defaults and why):
 - confidence="variance": the paper's default h (logit variance); "entropy" uses log(C) - H(p)
   and "maxprob" max softmax, both the paper's alternatives, both >= 0 so lambda's ratio holds.
 - beta=0.5: the paper's sweep finds 0.3..0.5 best and 0.9 worst; the table value is unstated.
 - lambda0=1.0: Fig. 5's grid {0, 0.5, 1, 2}: > 0 always helps, too large hurts.
 - unlabeled_steps (tau') = local_steps (tau) = 10, lr 0.05, batch 32: not reported in the paper;
   the values of the reference Fashion-MNIST trial.
 - kl_direction="teacher_student": KL(s- || student), as in the formula and the unofficial
   reimplementation; "student_teacher" is KL(student || s-).
 - kl_input="strong": the student sees psi(x) in the KL term too (unofficial reimplementation);
   "clean" feeds it x.
 - unlabeled_sampling="all": batches are drawn from all unlabeled samples and the loss is the
   mean over the batch with the masks, exactly the formula (the unlabeled step shrinks when few
   samples pass beta); "kept" draws batches only from kept samples.
 - delta_combination="sum": Delta_L + Delta_U as the paper says; "mean" halves it. The sum
   doubles the step of labeled-only FedAvg at the same lr; on Fashion-MNIST, Dirichlet(0.1), 5%
   labels "mean" measured 3-5 points better (docs/fedlabel-investigation.md).
 - aggregation="weighted": FedAvg over the summed delta by r_k (the paper). "split" uploads the
   two deltas and averages Delta_L uniformly and Delta_U by #kept, then takes the mean of the
   two (seen in another implementation; kept as an option only).
 - strong view psi: RandAugment with strong_num_ops=1 op at strong_magnitude=10, plus cutout.
 - weak_shift=2 (shared with FedAvg): the labeled batches of both get the same weak view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedlabel.algorithms.base import Algorithm, AlgorithmParams, ClientUpdate, knows_truth, total
from fedlabel.algorithms.fedavg import train_labeled
from fedlabel.augment import strong_augment
from fedlabel.errors import check
from fedlabel.robust import Combine, weighted_mean
from fedlabel.training import Params, add_scaled, predict_logits, subtract, to_float, zeros_like

CONFIDENCES = ("variance", "entropy", "maxprob")


@dataclass(frozen=True)
class FedLabelParams(AlgorithmParams):
    name: str = "fedlabel"
    unlabeled_steps: int = 10  # tau'
    beta: float = 0.5
    lambda0: float = 1.0
    confidence: str = "variance"
    expert: str = "both"  # both | local | global (the paper's Table 1 ablation)
    kl_direction: str = "teacher_student"
    kl_input: str = "strong"
    unlabeled_sampling: str = "all"
    delta_combination: str = "sum"
    aggregation: str = "weighted"
    strong_num_ops: int = 1
    strong_magnitude: int = 10
    strong_cutout: int = 10

    def validate(self) -> None:
        super().validate()
        check(self.unlabeled_steps >= 0, "algorithm.unlabeled_steps", f"must be >= 0, got {self.unlabeled_steps}")
        check(0 <= self.beta < 1, "algorithm.beta", f"must be in [0, 1), got {self.beta}")
        check(self.lambda0 >= 0, "algorithm.lambda0", f"must be >= 0, got {self.lambda0}")
        for key, value, choices in (
            ("confidence", self.confidence, CONFIDENCES),
            ("expert", self.expert, ("both", "local", "global")),
            ("kl_direction", self.kl_direction, ("teacher_student", "student_teacher")),
            ("kl_input", self.kl_input, ("strong", "clean")),
            ("unlabeled_sampling", self.unlabeled_sampling, ("all", "kept")),
            ("delta_combination", self.delta_combination, ("sum", "mean")),
            ("aggregation", self.aggregation, ("weighted", "split")),
        ):
            check(value in choices, f"algorithm.{key}", f"unknown value {value!r}; choose from {list(choices)}")
        check(0 <= self.strong_magnitude <= 30, "algorithm.strong_magnitude", f"must be in [0, 30], got {self.strong_magnitude}")
        check(self.strong_num_ops >= 0, "algorithm.strong_num_ops", f"must be >= 0, got {self.strong_num_ops}")
        check(self.strong_cutout >= 0, "algorithm.strong_cutout", f"must be >= 0, got {self.strong_cutout}")


# --------------------------------------------------------------------------------------------
# Pure tensor functions (tested on hand-checked tensors)


def confidence(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """h(s) >= 0 per row: logit variance, log(C) - entropy, or max softmax probability."""
    if logits.shape[0] == 0:
        return logits.new_zeros(0)
    if kind == "variance":
        return logits.var(dim=1, unbiased=False)
    probs = logits.softmax(dim=1)
    if kind == "maxprob":
        return probs.max(dim=1).values
    if kind == "entropy":
        entropy = -(probs * logits.log_softmax(dim=1)).sum(dim=1)
        return (math.log(logits.shape[1]) - entropy).clamp_min(0.0)
    raise ValueError(f"unknown confidence {kind!r}; choose from {CONFIDENCES}")


@dataclass(frozen=True)
class ExpertChoice:
    """Per unlabeled sample: pseudo-label, masks and the consistency target (all tensors)."""

    pseudo_label: torch.Tensor  # argmax of the expert s*
    keep: torch.Tensor  # bool: max softmax(s*) > beta
    agree: torch.Tensor  # bool: kept and argmax s- == pseudo_label
    consistency_weight: torch.Tensor  # lambda(x) = lambda0 h(s-)/h(s*), 0 where not agree
    minus_probs: torch.Tensor  # softmax(s-), the consistency target
    global_is_expert: torch.Tensor  # bool


def select_experts(
    global_logits: torch.Tensor,
    local_logits: torch.Tensor,
    *,
    confidence_kind: str,
    beta: float,
    lambda0: float,
    expert: str = "both",
) -> ExpertChoice:
    """Steps 2-3 of Algorithm 1: per-sample expert, threshold, consistency weight.
    Ties go to the local model. expert="local"/"global" fixes the expert (ablation)."""
    h_g = confidence(global_logits, confidence_kind)
    h_l = confidence(local_logits, confidence_kind)
    if expert == "both":
        use_global = h_g > h_l
    else:
        use_global = torch.full_like(h_g, expert == "global", dtype=torch.bool)
    star = torch.where(use_global[:, None], global_logits, local_logits)
    minus = torch.where(use_global[:, None], local_logits, global_logits)
    h_star = torch.where(use_global, h_g, h_l)
    h_minus = torch.where(use_global, h_l, h_g)
    max_prob, pseudo = star.softmax(dim=1).max(dim=1)
    keep = max_prob > beta
    agree = keep & (minus.argmax(dim=1) == pseudo)
    ratio = torch.where(h_star > 0, h_minus / h_star.clamp_min(1e-12), torch.ones_like(h_star))
    lam = lambda0 * ratio.clamp(0.0, 1.0) * agree
    return ExpertChoice(pseudo, keep, agree, lam, minus.softmax(dim=1), use_global)


def unlabeled_loss(
    student_logits: torch.Tensor,
    student_kl_logits: torch.Tensor,
    choice: ExpertChoice,
    *,
    kl_direction: str = "teacher_student",
) -> torch.Tensor:
    """F_U for one batch: mean over the batch of CE(student, y_hat) 1(kept)
    + lambda KL(s- || student) 1(agree). ``choice`` holds this batch's rows."""
    ce = F.cross_entropy(student_logits, choice.pseudo_label, reduction="none") * choice.keep
    log_student = student_kl_logits.log_softmax(dim=1)
    target = choice.minus_probs
    if kl_direction == "teacher_student":
        kl = (target * (target.clamp_min(1e-12).log() - log_student)).sum(dim=1)
    else:
        kl = (log_student.exp() * (log_student - target.clamp_min(1e-12).log())).sum(dim=1)
    return (ce + choice.consistency_weight * kl).mean()


def _rows(choice: ExpertChoice, idx: torch.Tensor) -> ExpertChoice:
    return ExpertChoice(*(getattr(choice, f)[idx] for f in choice.__dataclass_fields__))


# --------------------------------------------------------------------------------------------


class FedLabel(Algorithm):
    name = "fedlabel"
    dpsgd_supported = True
    Params = FedLabelParams
    trains_on_bags = True
    round_fields = ("global_expert_share", "global_expert_accuracy", "local_expert_accuracy")

    @classmethod
    def check(cls, cfg) -> None:
        p = cfg.algorithm
        check(cfg.privacy.name != "dpsgd" or p.unlabeled_sampling == "all", "algorithm.unlabeled_sampling",
              "privacy=dpsgd needs 'all': the sampling rate of a pool of kept samples would depend on the data")
        check(cfg.privacy.name != "central_dp" or p.aggregation != "split", "algorithm.aggregation",
              "privacy=central_dp clips and averages one update per client; 'split' uploads two")
        check(cfg.aggregation.robust == "none" or p.aggregation != "split", "aggregation.robust",
              f"aggregation.robust={cfg.aggregation.robust} combines one update per client; "
              "algorithm.aggregation=split uploads two")

    def client_work(self, data) -> float:
        """The labeled batches, one pass over the unlabeled part (expert selection) and its batches."""
        p: FedLabelParams = self.params
        work = super().client_work(data)
        if p.unlabeled_steps and data.num_unlabeled:
            work += data.num_unlabeled + min(p.batch_size, data.num_unlabeled) * p.unlabeled_steps
        return work

    def pool_metrics(self, updates: list[ClientUpdate]) -> dict[str, float | None]:
        """The shared metrics plus the global expert's share of the kept pseudo-labels and the
        pseudo-label accuracy where the global (resp. local) model was the expert."""
        pooled = super().pool_metrics(updates)
        kept, kept_global = total(updates, "num_kept"), total(updates, "num_kept_global")
        correct, global_correct = total(updates, "num_kept_correct"), total(updates, "num_kept_global_correct")
        truth = knows_truth(updates)
        experts = any("num_kept_global" in u.metrics for u in updates)
        pooled["global_expert_share"] = kept_global / kept if kept and experts else None
        pooled["global_expert_accuracy"] = global_correct / kept_global if truth and kept_global else None
        local = kept - kept_global
        pooled["local_expert_accuracy"] = (correct - global_correct) / local if truth and experts and local else None
        return pooled

    def client_update(self, model, global_params, data, ctx, *, extras=None) -> ClientUpdate:
        p: FedLabelParams = self.params
        device, generator = ctx.device, ctx.generator
        local, loss_l = train_labeled(model, global_params, data, p, ctx)
        delta_l = subtract(local, global_params)

        x_u = data.unlabeled_images.to(device)
        n_u = data.num_unlabeled
        choice = select_experts(
            predict_logits(model, global_params, x_u, device=device),
            predict_logits(model, local, x_u, device=device),
            confidence_kind=p.confidence,
            beta=p.beta,
            lambda0=p.lambda0,
            expert=p.expert,
        )
        pool = torch.arange(n_u) if p.unlabeled_sampling == "all" else choice.keep.nonzero().flatten().cpu()
        n_kept = int(choice.keep.sum())
        steps = p.unlabeled_steps if n_kept > 0 else 0
        batches = [pool[i] for i in ctx.batches(len(pool), batch_size=p.batch_size, steps=steps)]

        def loss_fn(f, idx: torch.Tensor) -> torch.Tensor:
            idx = idx.to(device)
            clean = to_float(x_u[idx])
            strong = strong_augment(
                clean, generator=generator, num_ops=p.strong_num_ops, magnitude=p.strong_magnitude, cutout=p.strong_cutout
            )
            if p.kl_input == "strong":
                student = student_kl = f(strong)
            else:
                both = f(torch.cat([strong, clean]))
                student, student_kl = both[: len(idx)], both[len(idx) :]
            return unlabeled_loss(student, student_kl, _rows(choice, idx), kl_direction=p.kl_direction)

        unl, loss_u = ctx.train(model, global_params, batches=batches, loss_fn=loss_fn, sgd=p.sgd())
        delta_u = subtract(unl, global_params)

        kept = choice.keep
        metrics = {
            "num_labeled": data.num_labeled,
            "num_unlabeled": n_u,
            "num_kept": n_kept,
            "num_kept_global": int((choice.global_is_expert & kept).sum()),
            "loss_labeled": loss_l,
            "loss_unlabeled": loss_u,
        }
        if data.unlabeled_true_labels is not None:
            truth = data.unlabeled_true_labels.to(device)
            correct = (choice.pseudo_label == truth) & kept
            metrics["num_kept_correct"] = int(correct.sum())
            metrics["num_kept_global_correct"] = int((correct & choice.global_is_expert).sum())
        weight = float(data.num_labeled + n_kept)
        if p.aggregation == "split":
            deltas = {"labeled": delta_l, "unlabeled": delta_u}
        else:
            scale = 0.5 if p.delta_combination == "mean" else 1.0
            combined = zeros_like(delta_l)
            add_scaled(combined, delta_l, scale)
            add_scaled(combined, delta_u, scale)
            deltas = {"model": combined}
        return ClientUpdate(client_id=data.client_id, deltas=deltas, weight=weight, metrics=metrics)

    def delta_names(self) -> frozenset[str]:
        return frozenset({"labeled", "unlabeled"}) if self.params.aggregation == "split" else frozenset({"model"})

    def aggregate(self, global_params: Params, updates: list[ClientUpdate], *,
                  combine: Combine = weighted_mean) -> Params:  # fmt: skip
        """"weighted": the base class's. "split": the fixed mix of the two deltas below (config
        validation refuses a robust ``combine`` with it)."""
        if self.params.aggregation != "split":
            return super().aggregate(global_params, updates, combine=combine)
        updates = sorted(updates, key=lambda u: u.client_id)
        step = zeros_like(global_params)
        labeled = [u for u in updates if u.metrics["num_labeled"] > 0]
        unlabeled = [u for u in updates if u.metrics["num_kept"] > 0]
        for u in labeled:
            add_scaled(step, u.deltas["labeled"], 0.5 / len(labeled))
        kept_total = sum(u.metrics["num_kept"] for u in unlabeled)
        for u in unlabeled:
            add_scaled(step, u.deltas["unlabeled"], 0.5 * u.metrics["num_kept"] / kept_total)
        return {k: global_params[k] + step[k] for k in global_params}
