"""FedLabel: selective knowledge assimilation (Cho, Joshi, Dimitriadis, ICCV 2023, Algorithm 1).

Per round, client k:
 1. supervised branch: w_L <- w, tau SGD steps of cross-entropy on labeled batches;
 2. expert choice: for every unlabeled x, the frozen global model w and the local model w_L
    both predict; the one with the higher confidence h is the expert s*, the other s-;
 3. threshold: y_hat = argmax s*, kept iff max softmax(s*) > beta;
 4. unlabeled branch: w_U <- w, tau' SGD steps on
        F_U = mean_x [ CE(f(w_U, psi(x)), y_hat) 1(kept)
                       + lambda(x) D(x) 1(kept and argmax s- == y_hat) ],
    lambda(x) = lambda0 h(s-) / h(s*)  (<= lambda0 since s* is the more confident);
 5. upload Delta_L + Delta_U and r_k = |D_L| + #kept. Server: w + sum_k r_k/sum r Delta_k.
s* and s- are computed once per round on the unaugmented x; CE(., y_hat) always sees psi(x), a
RandAugment view drawn anew at every step.

The consistency term D(x), with q = softmax(s-) and KL(a, b) = sum_c a_c log(a_c / b_c):
 - our reading of the paper's equations (6) and (8) (the paper's text was not available to us
   beyond the summary in ../shared/reference/fedlabel-method.md, which says the KL's direction
   and input are not fixed; the reading is the review's): D(x) = KL(softmax(f(w_U, x)), q), the
   student on the unaugmented x and first in the KL. Preset fedlabel_paper (kl_input="clean",
   kl_direction="student_teacher", strong_magnitude_scale=10; the rest as below).
 - the defaults (kl_input="strong", kl_direction="teacher_student"): D(x) =
   KL(q, softmax(f(w_U, psi(x)))), the student on the same psi(x) as in the CE term and second
   in the KL, as in an unofficial reimplementation. The paper does not discuss either choice
   beyond writing the equations; algorithm=fedlabel takes any combination of the two keys.

Choices the paper leaves open, as config values (defaults and why):
 - confidence="variance": the paper's default h (logit variance); "entropy" uses log(C) - H(p)
   and "maxprob" max softmax, both the paper's alternatives, both >= 0 so lambda's ratio holds.
 - beta=0.5: the paper's sweep finds 0.3..0.5 best and 0.9 worst; the table value is unstated.
 - lambda0=1.0: Fig. 5's grid {0, 0.5, 1, 2}: > 0 always helps, too large hurts.
 - unlabeled_steps (tau') = local_steps (tau) = 10, lr 0.05, batch 32: not reported in the paper;
   the values of the reference Fashion-MNIST trial.
 - kl_direction="teacher_student": KL(q, student), the unofficial reimplementation's;
   "student_teacher" is KL(student, q), the equations' order.
 - kl_input="strong": the student sees psi(x) in the KL term too (unofficial reimplementation);
   "clean" feeds it x, as the equations do.
 - unlabeled_sampling="all": batches are drawn from all unlabeled samples and the loss is the
   mean over the batch with the masks, exactly the formula (the unlabeled step shrinks when few
   samples pass beta); "kept" draws batches only from kept samples.
 - delta_combination="sum": Delta_L + Delta_U as the paper says; "mean" halves it. The sum
   doubles the step of labeled-only FedAvg at the same lr; on Fashion-MNIST, Dirichlet(0.1), 5%
   labels "mean" measured 3-5 points better (docs/fedlabel-investigation.md).
 - aggregation="weighted": FedAvg over the summed delta by r_k (the paper). "split" uploads the
   two deltas and averages Delta_L uniformly and Delta_U by #kept, then takes the mean of the
   two (seen in another implementation; kept as an option only).
 - strong view psi: RandAugment with strong_num_ops=1 op at strong_magnitude=10 (the paper's
   1 op at magnitude 10), plus a strong_cutout=10 square (FixMatch's; fedlabel_paper too).
   The default strong_magnitude_scale=30 (torchvision's) makes magnitude 10 a third of each op's
   strongest setting; fedlabel_paper's 10 (Cubuk et al.'s scale) makes it the strongest.
 - weak_shift=2 (shared with FedAvg): the labeled batches of both get the same weak view.

expert="local"/"global" fixes who pseudo-labels (the paper's Table 1 ablation, registered as
fedlabel_local_only and fedlabel_global_only): the local model w_L (after its tau labeled steps)
or the global model w is always s*, the other always s-. The threshold beta still applies to the
fixed expert, and the consistency term still uses the other model as s- with
lambda = lambda0 min(1, h(s-)/h(s*)) where the two agree: the paper only says the expert is
fixed, so the rest of the objective is kept identical and the comparison isolates the per-sample
choice (lambda is capped at lambda0 since s* may now be the less confident model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from fedlabel.algorithms.base import (
    Algorithm,
    AlgorithmParams,
    ClientUpdate,
    ModelParams,
    knows_truth,
    total,
)
from fedlabel.algorithms.batching import (
    BatchedUpdate,
    ClientImages,
    batches,
    minus,
    padded,
    row,
    sgd_step,
    stack,
)
from fedlabel.algorithms.fedavg import BatchedLabeled, train_labeled
from fedlabel.augment import (
    CUBUK_SCALE,
    StrongDraws,
    apply_strong,
    check_strong_settings,
    draw_strong,
    strong_augment,
)
from fedlabel.data import ClientData
from fedlabel.errors import check
from fedlabel.robust import Combine, weighted_mean
from fedlabel.training import (
    ClientContext,
    Params,
    add_scaled,
    predict_logits,
    subtract,
    to_float,
    zeros_like,
)

CONFIDENCES = ("variance", "entropy", "maxprob")
# What makes the default FedLabel our reading of the paper's equations (module docstring).
FEDLABEL_PAPER = {
    "kl_input": "clean",
    "kl_direction": "student_teacher",
    "strong_magnitude_scale": CUBUK_SCALE,
}


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
    strong_magnitude: int = 10  # on the 0..strong_magnitude_scale scale
    strong_cutout: int = 10
    strong_magnitude_scale: int = 30  # 30: torchvision's scale, 10: Cubuk et al.'s (augment.py)

    def validate(self) -> None:
        super().validate()
        check(
            self.unlabeled_steps >= 0,
            "algorithm.unlabeled_steps",
            f"must be >= 0, got {self.unlabeled_steps}",
        )
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
            check(
                value in choices,
                f"algorithm.{key}",
                f"unknown value {value!r}; choose from {list(choices)}",
            )
        check_strong_settings(
            self.strong_num_ops,
            self.strong_magnitude,
            self.strong_cutout,
            self.strong_magnitude_scale,
        )


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
    """F_U for one batch: mean over the batch of CE(student, y_hat) 1(kept) + lambda D 1(agree)
    with D = KL(q, softmax(student_kl)) ("teacher_student") or KL(softmax(student_kl), q)
    ("student_teacher"), q = softmax(s-). ``choice`` holds this batch's rows."""
    ce = F.cross_entropy(student_logits, choice.pseudo_label, reduction="none") * choice.keep
    log_student = student_kl_logits.log_softmax(dim=1)
    target = choice.minus_probs
    if kl_direction == "teacher_student":
        kl = (target * (target.clamp_min(1e-12).log() - log_student)).sum(dim=1)
    else:
        kl = (log_student.exp() * (log_student - target.clamp_min(1e-12).log())).sum(dim=1)
    return (ce + choice.consistency_weight * kl).mean()


def batch_loss(
    f: Callable[[Tensor], Tensor],
    strong: Tensor,
    clean: Tensor,
    choice: ExpertChoice,
    p: FedLabelParams,
) -> Tensor:
    """F_U of one batch for the student ``f`` (images -> logits): CE on ``strong`` = psi(x), and
    the consistency term on ``strong`` or ``clean`` = x as ``p.kl_input`` says, in the direction
    ``p.kl_direction`` (the module docstring's D(x))."""
    if p.kl_input == "strong":
        student = student_kl = f(strong)
    else:
        both = f(torch.cat([strong, clean]))
        student, student_kl = both[: len(strong)], both[len(strong) :]
    return unlabeled_loss(student, student_kl, choice, kl_direction=p.kl_direction)


def _rows(choice: ExpertChoice, idx: torch.Tensor) -> ExpertChoice:
    return ExpertChoice(*(getattr(choice, f)[idx] for f in choice.__dataclass_fields__))


def pseudo_label_counts(
    choice: ExpertChoice, truth: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Counts over the last dimension (the unlabeled samples): kept, kept with the global model as
    expert and, where the true labels are known (simulation only), how many of those are right."""
    kept = choice.keep
    counts = {"num_kept": kept.sum(-1), "num_kept_global": (choice.global_is_expert & kept).sum(-1)}
    if truth is not None:
        correct = (choice.pseudo_label == truth) & kept
        counts["num_kept_correct"] = correct.sum(-1)
        counts["num_kept_global_correct"] = (correct & choice.global_is_expert).sum(-1)
    return counts


def fedlabel_update(
    data: ClientData,
    p: FedLabelParams,
    delta_l: Params,
    delta_u: Params,
    counts: dict[str, int],
    loss_l: float,
    loss_u: float,
) -> ClientUpdate:
    """Step 5: the upload (Delta_L + Delta_U, or both apart for aggregation=split), r_k and the
    client's metrics."""
    if p.aggregation == "split":
        deltas = {"labeled": delta_l, "unlabeled": delta_u}
    else:
        scale = 0.5 if p.delta_combination == "mean" else 1.0
        combined = zeros_like(delta_l)
        add_scaled(combined, delta_l, scale)
        add_scaled(combined, delta_u, scale)
        deltas = {"model": combined}
    metrics = {
        "num_labeled": data.num_labeled,
        "num_unlabeled": data.num_unlabeled,
        "num_kept": counts["num_kept"],
        "num_kept_global": counts["num_kept_global"],
        "loss_labeled": loss_l,
        "loss_unlabeled": loss_u,
    }
    metrics.update({k: v for k, v in counts.items() if k not in metrics})
    weight = float(data.num_labeled + counts["num_kept"])
    return ClientUpdate(client_id=data.client_id, deltas=deltas, weight=weight, metrics=metrics)


# --------------------------------------------------------------------------------------------


class FedLabel(Algorithm[FedLabelParams]):
    dpsgd_supported = True
    Params = FedLabelParams
    trains_on_bags = True
    round_fields = ("global_expert_share", "global_expert_accuracy", "local_expert_accuracy")

    @classmethod
    def check(cls, cfg) -> None:
        p = cfg.algorithm
        check(
            cfg.privacy.name != "dpsgd" or p.unlabeled_sampling == "all",
            "algorithm.unlabeled_sampling",
            "privacy=dpsgd needs 'all': the sampling rate of a pool of kept samples would depend on"
            " the data",
        )
        check(
            cfg.privacy.name != "central_dp" or p.aggregation != "split",
            "algorithm.aggregation",
            "privacy=central_dp clips and averages one update per client; 'split' uploads two",
        )
        check(
            cfg.aggregation.robust == "none" or p.aggregation != "split",
            "aggregation.robust",
            f"aggregation.robust={cfg.aggregation.robust} combines one update per client; "
            "algorithm.aggregation=split uploads two",
        )

    def client_work(self, data) -> float:
        """The labeled batches, one pass over the unlabeled part (expert selection) and its
        batches."""
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
        correct, global_correct = (
            total(updates, "num_kept_correct"),
            total(updates, "num_kept_global_correct"),
        )
        truth = knows_truth(updates)
        experts = any("num_kept_global" in u.metrics for u in updates)
        pooled["global_expert_share"] = kept_global / kept if kept and experts else None
        pooled["global_expert_accuracy"] = (
            global_correct / kept_global if truth and kept_global else None
        )
        local = kept - kept_global
        pooled["local_expert_accuracy"] = (
            (correct - global_correct) / local if truth and experts and local else None
        )
        return pooled

    def client_update(self, model, global_params, data, ctx, *, extras=None) -> ClientUpdate:
        p: FedLabelParams = self.params
        device, generator = ctx.device, ctx.generator
        local, loss_l = train_labeled(model, global_params, data, p, ctx)

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
        pool = (
            torch.arange(n_u)
            if p.unlabeled_sampling == "all"
            else choice.keep.nonzero().flatten().cpu()
        )
        n_kept = int(choice.keep.sum())
        steps = p.unlabeled_steps if n_kept > 0 else 0
        batches = [pool[i] for i in ctx.batches(len(pool), batch_size=p.batch_size, steps=steps)]

        def loss_fn(f, idx: torch.Tensor) -> torch.Tensor:
            idx = idx.to(device)
            clean = to_float(x_u[idx])
            strong = strong_augment(
                clean,
                generator=generator,
                num_ops=p.strong_num_ops,
                magnitude=p.strong_magnitude,
                cutout=p.strong_cutout,
                magnitude_scale=p.strong_magnitude_scale,
            )
            return batch_loss(f, strong, clean, _rows(choice, idx), p)

        unl, loss_u = ctx.train(model, global_params, batches=batches, loss_fn=loss_fn, sgd=p.sgd())
        truth = (
            None if data.unlabeled_true_labels is None else data.unlabeled_true_labels.to(device)
        )
        counts = {k: int(v) for k, v in pseudo_label_counts(choice, truth).items()}
        return fedlabel_update(
            data,
            p,
            subtract(local, global_params),
            subtract(unl, global_params),
            counts,
            loss_l,
            loss_u,
        )

    def delta_names(self) -> frozenset[str]:
        return (
            frozenset({"labeled", "unlabeled"})
            if self.params.aggregation == "split"
            else frozenset({"model"})
        )

    def aggregate(
        self,
        global_params: ModelParams,
        updates: list[ClientUpdate],
        *,
        combine: Combine = weighted_mean,
    ) -> ModelParams:
        """ "weighted": the base class's. "split": the fixed mix of the two deltas below (config
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


# --------------------------------------------------------------------------------------------
# Batched (engine=vectorized): see fedlabel.algorithms.batching. The thresholds are masks: the
# keep mask and the consistency weights of each row.

_LOGIT_CHUNK = 256  # unlabeled samples per client per forward when choosing experts


@batches(FedLabel)
class FedLabelBatched(BatchedUpdate[FedLabelParams]):
    def __init__(self, model, algorithm, clients, device) -> None:
        super().__init__(model, algorithm, clients, device)
        p: FedLabelParams = self.p
        self.labeled = BatchedLabeled(model, p, clients, device, mu=0.0)
        unlabeled = [c.unlabeled_true_labels for c in clients]
        self.unlabeled = ClientImages([c.unlabeled_images for c in clients], unlabeled, device)
        self._logits = vmap(lambda params, x: functional_call(model, params, (x,)))

        def loss_fn(
            params: Params,
            strong: Tensor,
            clean: Tensor,
            pseudo: Tensor,
            keep: Tensor,
            weight: Tensor,
            target: Tensor,
            count: Tensor,
        ) -> Tensor:
            choice = ExpertChoice(
                pseudo, keep, keep, weight, target, keep
            )  # the fields unlabeled_loss reads
            # batch_loss is the mean over all (padded) rows; rescale to this client's rows
            loss = batch_loss(
                lambda x: functional_call(model, params, (x,)), strong, clean, choice, p
            )
            return loss * len(strong) / count.clamp_min(1)

        self._step = vmap(grad_and_value(loss_fn))

    @torch.no_grad()
    def _experts(
        self, clients: list[ClientData], global_params: Params, local
    ) -> tuple[ExpertChoice, Tensor, Tensor]:
        """select_experts on every client's unlabeled samples, padded to C x N_max rows.
        Returns (choice with C x N_max fields, flat image indices, validity mask)."""
        p: FedLabelParams = self.p
        c = len(clients)
        sizes = torch.tensor([d.num_unlabeled for d in clients])
        n_max = max(int(sizes.max()), 1)
        valid = torch.arange(n_max)[None, :] < sizes[:, None]
        flat = (
            (torch.arange(n_max)[None, :] + self.unlabeled.starts(clients)[:, None]) * valid
        ).to(self.device)
        global_logits, local_logits = [], []
        for i in range(0, n_max, _LOGIT_CHUNK):
            x = to_float(self.unlabeled.images[flat[:, i : i + _LOGIT_CHUNK]])
            global_logits.append(
                functional_call(self.model, global_params, (x.flatten(0, 1),)).view(
                    c, x.shape[1], -1
                )
            )
            local_logits.append(self._logits(local, x))
        g, loc = torch.cat(global_logits, 1), torch.cat(local_logits, 1)
        choice = select_experts(
            g.flatten(0, 1),
            loc.flatten(0, 1),
            confidence_kind=p.confidence,
            beta=p.beta,
            lambda0=p.lambda0,
            expert=p.expert,
        )
        valid = valid.to(self.device)
        shaped = {
            f: getattr(choice, f).view(c, n_max, *getattr(choice, f).shape[1:])
            for f in choice.__dataclass_fields__
        }
        shaped["keep"] = shaped["keep"] & valid
        return ExpertChoice(**shaped), flat, valid

    def train(self, clients, global_params, gens) -> list[ClientUpdate]:
        p: FedLabelParams = self.p
        c = len(clients)
        local, loss_l = self.labeled(clients, global_params, gens)
        choice, flat_u, valid = self._experts(clients, global_params, local)
        keep_cpu = choice.keep.cpu()
        n_kept = keep_cpu.sum(1)

        batch_lists, draws = [], []
        h, w = self.sample_shape[1:]
        for i, (d, g) in enumerate(zip(clients, gens)):
            pool = (
                torch.arange(d.num_unlabeled)
                if p.unlabeled_sampling == "all"
                else keep_cpu[i].nonzero().flatten()
            )
            n_steps = p.unlabeled_steps if n_kept[i] > 0 else 0
            bs = [
                pool[j]
                for j in ClientContext(self.device, g).batches(
                    len(pool), batch_size=p.batch_size, steps=n_steps
                )
            ]
            batch_lists.append(bs)
            draws.append(
                [
                    draw_strong(
                        len(b),
                        h,
                        w,
                        generator=g,
                        num_ops=p.strong_num_ops,
                        magnitude=p.strong_magnitude,
                        cutout=p.strong_cutout,
                        magnitude_scale=p.strong_magnitude_scale,
                    )
                    for b in bs
                ]
            )
        steps = torch.tensor([len(bs) for bs in batch_lists])
        index, mask, width = padded(batch_lists, int(steps.max()))
        index, mask = index.to(self.device), mask.to(self.device)
        rows = torch.arange(c, device=self.device)[:, None]
        sgd = p.sgd()
        params, velocity = stack(global_params, c, sgd)
        total = torch.zeros(c, device=self.device)
        for t in range(index.shape[1]):
            idx, m = index[:, t], mask[:, t]
            clean = to_float(self.unlabeled.images[flat_u[rows, idx].flatten()])
            filler = [_step_strong(ds, t, width, p, h, w) for ds in draws]
            strong = apply_strong(clean, StrongDraws.cat(filler)).view(c, width, *self.sample_shape)
            clean = clean.view(c, width, *self.sample_shape)
            keep = choice.keep[rows, idx] & m
            weight = choice.consistency_weight[rows, idx] * m
            target = choice.minus_probs[rows, idx]
            grads, loss = self._step(
                params,
                strong,
                clean,
                choice.pseudo_label[rows, idx],
                keep,
                weight,
                target,
                m.sum(1),
            )
            active = (steps > t).to(self.device)
            sgd_step(params, velocity, grads, active, sgd)
            total += loss.detach() * active
        loss_u = (total.cpu() / steps.clamp_min(1)).tolist()

        truth = None
        if self.unlabeled.labels is not None:
            starts = self.unlabeled.starts(clients).to(self.device)
            truth = self.unlabeled.labels[
                (torch.arange(valid.shape[1], device=self.device)[None, :] + starts[:, None])
                * valid
            ]
        counts = {k: v.cpu() for k, v in pseudo_label_counts(choice, truth).items()}
        delta_l, delta_u = minus(local, global_params), minus(params, global_params)
        return [
            fedlabel_update(
                d,
                p,
                row(delta_l, i),
                row(delta_u, i),
                {k: int(v[i]) for k, v in counts.items()},
                loss_l[i],
                loss_u[i],
            )
            for i, d in enumerate(clients)
        ]


def _step_strong(
    draws: list[StrongDraws], t: int, width: int, p: FedLabelParams, h: int, w: int
) -> StrongDraws:
    """A client's draws at step t padded to ``width`` rows (padding rows: identity, no cutout)."""
    got = draws[t] if t < len(draws) else None
    n = 0 if got is None else len(got.ops)
    cutout = torch.zeros(width - n, 1, h, w, dtype=torch.bool) if p.strong_cutout else None
    pad = StrongDraws(
        p.strong_magnitude,
        torch.zeros(width - n, p.strong_num_ops, dtype=torch.long),
        torch.ones(width - n, p.strong_num_ops),
        cutout,
        p.strong_magnitude_scale,
    )
    return pad if got is None else StrongDraws.cat([got, pad])
