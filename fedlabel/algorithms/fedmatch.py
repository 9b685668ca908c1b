"""FedMatch (Jeong, Yoon, Yang, Hwang, ICLR 2021), the labels-at-client scenario.

Every model parameter is decomposed, theta = sigma + psi; the global state holds both
("sigma.<name>", "psi.<name>") and FedAvg averages both. Per round, client k starts from the
global (sigma, psi) and, for tau steps, alternates (as the official code does):
 1. a sigma step on a labeled batch: lambda_s CE(f(sigma + psi*, weak(x)), y) (psi frozen);
 2. a psi step on an unlabeled batch u (sigma frozen):
        lambda_i Phi_ICCS + lambda_a CE(f(theta, strong(u)), y_hat) + lambda_l1 |psi|_1
        + lambda_l2 |sigma* - psi|_2^2,
    Phi_ICCS = mean over confident u of (1/H) sum_j KL(p_helper_j(weak u) || p_local(weak u));
    y_hat = argmax of the summed one-hot votes of the local model and the H helpers on weak(u)
    (the paper's agreement-based label); samples whose local max probability is below
    ``confidence_threshold`` are discarded (the official code's mask).
Server: after aggregation it embeds each client's returned model (sigma + psi) by its softmax
output on a fixed random input and keeps the embeddings; in helper rounds it sends each cohort
client the models of its H nearest clients (Euclidean nearest neighbours of the embeddings, as
the paper's KD-tree returns them) inside the train message. Central evaluation runs
sigma + psi with psi hard-thresholded at ``l1_thres`` (the official inference path).

Choices (config values), and why:
 - helper_interval=10: the official code sends helpers only every 10th round (h_interval) and
   otherwise trains without them (no ICCS term, labels from the local model alone); 1 = every
   round. A client that has never returned a model has no embedding and gets no helpers
   (official behaviour).
 - helper_payload="psi": as in the official code only a helper's psi travels, and the client
   builds the helper as its own (global) sigma + helper psi; "model" sends sigma + psi.
 - num_helpers=2, confidence_threshold=0.75, psi_factor=0.2 (psi initialised as 0.2 sigma),
 l1_thres=5e-6:
   the official labels-at-client configuration. The initial theta is the seeded initial model:
   sigma = theta/(1 + psi_factor), psi = psi_factor * theta/(1 + psi_factor).
 - agreement="plurality": the paper's Max over the vote counts (ties to the lowest class, like
   the official argmax); "majority" keeps only labels with more than (H + 1)/2 votes.
 - Loss weights: the official lambda_s=10, lambda_i=lambda_a=1e-2, lambda_l2=10, lambda_l1=1e-4
   go with SGD at lr 1e-3. Here every algorithm shares lr 0.05, so lambda_s=1 (the labeled step
   is FedAvg's), the unlabeled terms keep the official ratio to it, lambda_i = lambda_a = 1e-3,
   and the regularisers keep the official per-step effect (lr * lambda): lambda_l2 =
   10 * 1e-3 / 0.05 = 0.2, lambda_l1 = 1e-4 * 1e-3 / 0.05 = 2e-6. Unit weights for the unlabeled
   terms (lambda_i = lambda_a = 1, as the FixMatch/UDA baselines) measured far worse: on 10
   Fashion-MNIST clients (5,000 images, Dirichlet 0.5, 5% labels, 5 per round) 0.28/0.50/0.53
   accuracy at rounds 5/10/15 with helpers every round, against 0.56/0.67/0.70 for FedAvg and
   0.57/0.68/0.72 for these defaults: the psi steps on the pseudo-labels undo the sigma steps'
   fit of the few labels. (The paper's comparison, too, has FedMatch near labeled-only FedAvg.)
 - unlabeled_batch_size=32 unlabeled samples per step (FedLabel's batch); the official code
   spreads one epoch of the unlabeled set over the labeled steps. The client reports the
   unlabeled samples it processed as num_unlabeled (the coverage denominator).
 - Every parameter is decomposed (the official ResNet-9 has only conv/dense kernels; our
   GroupNorm affine parameters and biases are decomposed too, so theta stays one vector).
 - Client weight r_k = labeled + unlabeled samples (the official FedAvg by client size).
 - The psi-sparsity communication tricks (delta_thres, sending only changed psi) are not
   implemented: they save bytes but do not change what is learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedlabel.algorithms.base import (
    Algorithm,
    AlgorithmParams,
    ClientUpdate,
    ModelParams,
    ServerSetup,
    StateDict,
    total,
)
from fedlabel.augment import check_strong_settings, strong_augment, weak_augment
from fedlabel.errors import check
from fedlabel.robust import Combine, weighted_mean
from fedlabel.training import Params, SgdConfig, forward, sgd_step, subtract, to_float, zeros_like

SIGMA, PSI = "sigma.", "psi."
HELPER = "helper"  # extras are named helper0, helper1, ... (nearest first)


@dataclass(frozen=True)
class FedMatchParams(AlgorithmParams):
    name: str = "fedmatch"
    unlabeled_batch_size: int = 32
    num_helpers: int = 2  # H
    helper_interval: int = 10  # helpers are sent in rounds that are multiples of this
    helper_payload: str = "psi"  # psi | model
    embedding_inputs: int = 1  # random images the server embeds each client model on
    confidence_threshold: float = 0.75  # keep an unlabeled sample iff local max probability >= this
    agreement: str = "plurality"  # plurality | majority
    lambda_s: float = 1.0  # labeled CE (sigma step)
    lambda_i: float = 1e-3  # inter-client consistency (KL to the helpers)
    lambda_a: float = 1e-3  # agreement-based pseudo-label CE on the strong view
    lambda_l1: float = 2e-6  # L1 sparsity of psi
    lambda_l2: float = 0.2  # L2 between sigma and psi
    psi_factor: float = 0.2
    l1_thres: float = 5e-6  # |psi| below this is dropped at evaluation
    strong_num_ops: int = 1
    strong_magnitude: int = 10  # on the 0..strong_magnitude_scale scale
    strong_cutout: int = 10
    strong_magnitude_scale: int = 30  # 30: torchvision's scale, 10: Cubuk et al.'s (augment.py)

    def validate(self) -> None:
        super().validate()
        check(
            self.unlabeled_batch_size >= 1,
            "algorithm.unlabeled_batch_size",
            f"must be >= 1, got {self.unlabeled_batch_size}",
        )
        check(
            self.num_helpers >= 0, "algorithm.num_helpers", f"must be >= 0, got {self.num_helpers}"
        )
        check(
            self.helper_interval >= 1,
            "algorithm.helper_interval",
            f"must be >= 1, got {self.helper_interval}",
        )
        check(
            self.helper_payload in ("psi", "model"),
            "algorithm.helper_payload",
            f"unknown value {self.helper_payload!r}; choose psi or model",
        )
        check(
            self.embedding_inputs >= 1,
            "algorithm.embedding_inputs",
            f"must be >= 1, got {self.embedding_inputs}",
        )
        check(
            0 <= self.confidence_threshold <= 1,
            "algorithm.confidence_threshold",
            f"must be in [0, 1], got {self.confidence_threshold}",
        )
        check(
            self.agreement in ("plurality", "majority"),
            "algorithm.agreement",
            f"unknown value {self.agreement!r}; choose plurality or majority",
        )
        for key in (
            "lambda_s",
            "lambda_i",
            "lambda_a",
            "lambda_l1",
            "lambda_l2",
            "psi_factor",
            "l1_thres",
        ):
            check(
                getattr(self, key) >= 0,
                f"algorithm.{key}",
                f"must be >= 0, got {getattr(self, key)}",
            )
        check_strong_settings(
            self.strong_num_ops,
            self.strong_magnitude,
            self.strong_cutout,
            self.strong_magnitude_scale,
        )


# --------------------------------------------------------------------------------------------
# Pure functions (tested on tiny tensors)


def decompose(params: Params, *, psi_factor: float) -> Params:
    """theta -> {sigma.k, psi.k} with psi = psi_factor * sigma and sigma + psi = theta."""
    out = {SIGMA + k: v / (1 + psi_factor) for k, v in params.items()}
    out.update({PSI + k: v * psi_factor / (1 + psi_factor) for k, v in params.items()})
    return out


def split(state: Params) -> tuple[Params, Params]:
    sigma = {k[len(SIGMA) :]: v for k, v in state.items() if k.startswith(SIGMA)}
    psi = {k[len(PSI) :]: v for k, v in state.items() if k.startswith(PSI)}
    return sigma, psi


def compose(sigma: Params, psi: Params, *, l1_thres: float = 0.0) -> Params:
    """theta = sigma + psi, with |psi| <= l1_thres dropped (0 keeps all of psi)."""
    if l1_thres <= 0:
        return {k: sigma[k] + psi[k] for k in sigma}
    return {k: sigma[k] + psi[k] * (psi[k].abs() > l1_thres) for k in sigma}


@dataclass(frozen=True)
class Agreement:
    pseudo_label: torch.Tensor  # argmax of the summed one-hot votes
    confident: torch.Tensor  # bool: local max probability >= confidence
    keep: torch.Tensor  # bool: confident (and, for "majority", more than half the votes)
    votes: torch.Tensor  # votes for pseudo_label


def agreement_pseudo_labels(
    local_probs: torch.Tensor,
    helper_probs: torch.Tensor,
    *,
    confidence: float,
    agreement: str = "plurality",
) -> Agreement:
    """FedMatch's agreement-based labels. local_probs N x C, helper_probs H x N x C (H may be 0)."""
    num_classes = local_probs.shape[1]
    votes = F.one_hot(local_probs.argmax(1), num_classes)
    if helper_probs.shape[0]:
        votes = votes + F.one_hot(helper_probs.argmax(2), num_classes).sum(0)
    top, label = votes.max(1)  # ties -> lowest class index
    confident = local_probs.max(1).values >= confidence
    keep = (
        confident if agreement == "plurality" else confident & (2 * top > helper_probs.shape[0] + 1)
    )
    return Agreement(label, confident, keep, top)


def consistency_loss(
    local_logits: torch.Tensor, helper_probs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Phi_ICCS: mean over masked samples of (1/H) sum_j KL(helper_j || local); 0 if H = 0."""
    if helper_probs.shape[0] == 0:
        return local_logits.sum() * 0.0
    log_local = local_logits.log_softmax(1)
    kl = (helper_probs * (helper_probs.clamp_min(1e-12).log() - log_local)).sum(2).mean(0)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the masked samples (0 when none is masked in)."""
    return (F.cross_entropy(logits, labels, reduction="none") * mask).sum() / mask.sum().clamp_min(
        1
    )


def decomposition_penalty(
    sigma: Params, psi: Params, *, lambda_l1: float, lambda_l2: float
) -> torch.Tensor:
    """lambda_l1 sum |psi| + lambda_l2 sum (sigma - psi)^2 over all decomposed parameters."""
    l1 = cast(torch.Tensor, sum(p.abs().sum() for p in psi.values()))
    l2 = cast(torch.Tensor, sum((sigma[k] - psi[k]).pow(2).sum() for k in psi))
    return lambda_l1 * l1 + lambda_l2 * l2


def nearest_helpers(embeddings: dict[int, torch.Tensor], client_id: int, k: int) -> list[int]:
    """The k clients whose embeddings are nearest (Euclidean) to client_id's, nearest first;
    ties go to the lower id. [] if client_id has no embedding."""
    if client_id not in embeddings or k == 0:
        return []
    others = sorted(c for c in embeddings if c != client_id)
    if not others:
        return []
    dist = torch.stack([embeddings[c] for c in others]).sub(embeddings[client_id]).pow(2).sum(1)
    order = torch.sort(dist, stable=True).indices[:k]
    return [others[i] for i in order.tolist()]


def random_probe(shape: tuple[int, ...], *, seed: int) -> torch.Tensor:
    """The fixed random input the server embeds models on: N(0.5, 0.5) truncated to [0, 1]
    (the official truncated Gaussian over pixel values)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 4]).generate_state(1)[0]))
    return nn.init.trunc_normal_(torch.empty(shape), mean=0.5, std=0.5, a=0.0, b=1.0, generator=gen)


class _Sgd:
    """training.sgd_step on a dict of leaf tensors from ``loss``'s gradients (unused: zero)."""

    def __init__(self, cfg: SgdConfig) -> None:
        self.cfg = cfg
        self.velocity: dict[str, torch.Tensor] | None = None

    def step(self, params: Params, loss: torch.Tensor) -> None:
        grads: Sequence[torch.Tensor | None] = torch.autograd.grad(
            loss, list(params.values()), allow_unused=True
        )
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]
        if self.cfg.momentum and self.velocity is None:
            self.velocity = zeros_like(params)
        sgd_step(params, grads, self.velocity, self.cfg)


# --------------------------------------------------------------------------------------------


class FedMatch(Algorithm[FedMatchParams]):
    Params = FedMatchParams
    central_dp_conflict = (
        "stores each client's returned model for the helpers (no helper would ever be sent)"
    )
    counts_unlabeled_per_step = True

    def __init__(self, params: FedMatchParams) -> None:
        super().__init__(params)
        self.embeddings: dict[int, torch.Tensor] = {}  # client id -> embedding of its latest model
        self.helper_models: dict[
            int, StateDict
        ] = {}  # client id -> what travels as its helper model
        self._model: nn.Module | None = None
        self._probe: torch.Tensor | None = None

    # ---- server side

    def init_global(self, params: ModelParams, *, setup: ServerSetup) -> ModelParams:
        self._model = setup.model
        self._probe = random_probe(
            (self.params.embedding_inputs, *setup.input_shape), seed=setup.seed
        )
        return decompose(params, psi_factor=self.params.psi_factor)

    def eval_params(self, global_params: ModelParams) -> ModelParams:
        return compose(*split(global_params), l1_thres=self.params.l1_thres)

    def aggregate(
        self,
        global_params: ModelParams,
        updates: list[ClientUpdate],
        *,
        combine: Combine = weighted_mean,
    ) -> ModelParams:
        """Embed and keep every returned client model, then FedAvg over (sigma, psi)."""
        for u in sorted(updates, key=lambda u: u.client_id):
            sigma, psi = split(
                {k: v + u.deltas["model"][k].to(v.device) for k, v in global_params.items()}
            )
            theta = compose(sigma, psi)
            with torch.no_grad():
                assert self._probe is not None and self._model is not None  # set by init_global
                probe = self._probe.to(next(iter(theta.values())).device)
                self.embeddings[u.client_id] = (
                    forward(self._model, theta, probe).softmax(1).flatten().cpu()
                )
            kept = psi if self.params.helper_payload == "psi" else theta
            self.helper_models[u.client_id] = {k: v.detach().cpu() for k, v in kept.items()}
        return super().aggregate(global_params, updates, combine=combine)

    def client_payload(
        self, rnd: int, cohort: list[int], global_params: ModelParams
    ) -> dict[int, dict[str, StateDict]]:
        if rnd % self.params.helper_interval:
            return {}
        payload = {}
        for cid in cohort:
            helpers = nearest_helpers(self.embeddings, cid, self.params.num_helpers)
            if helpers:
                payload[cid] = {
                    f"{HELPER}{i}": self.helper_models[h] for i, h in enumerate(helpers)
                }
        return payload

    def state_dict(self) -> dict:
        return {"embeddings": dict(self.embeddings), "helper_models": dict(self.helper_models)}

    def load_state_dict(self, state: dict) -> None:
        self.embeddings = {int(k): v for k, v in state.get("embeddings", {}).items()}
        self.helper_models = {int(k): v for k, v in state.get("helper_models", {}).items()}

    def pool_metrics(self, updates: list[ClientUpdate]) -> dict[str, float | None]:
        """The shared metrics plus ``helper_models``: how many helper models the clients received
        (in summary.json's rounds, not in rounds.csv)."""
        pooled = super().pool_metrics(updates)
        if any("num_helper_models" in u.metrics for u in updates):
            pooled["helper_models"] = int(total(updates, "num_helper_models"))
        return pooled

    # ---- client side

    def _helpers(
        self, extras: dict[str, StateDict] | None, sigma: ModelParams
    ) -> list[ModelParams]:
        """The helper models, nearest first: own sigma + helper psi, or the sent model."""
        extras = extras or {}
        names = sorted(
            (n for n in extras if n.startswith(HELPER)), key=lambda n: int(n[len(HELPER) :])
        )
        sent = [{k: v.to(sigma[k].device) for k, v in extras[n].items()} for n in names]
        return [compose(sigma, h) for h in sent] if self.params.helper_payload == "psi" else sent

    def client_update(self, model, global_params, data, ctx, *, extras=None) -> ClientUpdate:
        p: FedMatchParams = self.params
        device, generator = ctx.device, ctx.generator
        sigma0, psi0 = split(global_params)
        helpers = self._helpers(extras, sigma0)
        sigma = {k: v.detach().clone().requires_grad_(True) for k, v in sigma0.items()}
        psi = {k: v.detach().clone().requires_grad_(True) for k, v in psi0.items()}
        opt_sigma, opt_psi = _Sgd(p.sgd()), _Sgd(p.sgd())
        x_l, y_l = data.labeled_images.to(device), data.labeled_labels.to(device)
        x_u = data.unlabeled_images.to(device)
        truth = (
            data.unlabeled_true_labels.to(device)
            if data.unlabeled_true_labels is not None
            else None
        )
        lab = ctx.batches(data.num_labeled, batch_size=p.batch_size, steps=p.local_steps)
        unl = ctx.batches(
            data.num_unlabeled, batch_size=p.unlabeled_batch_size, steps=p.local_steps
        )
        losses_l, losses_u = [], []
        seen = kept = correct = 0
        for step in range(p.local_steps):
            if step < len(lab):
                idx = lab[step].to(device)
                xb = to_float(x_l[idx])
                if p.weak_shift:
                    xb = weak_augment(xb, generator=generator, max_shift=p.weak_shift)
                theta = {k: sigma[k] + psi[k].detach() for k in sigma}
                loss = p.lambda_s * F.cross_entropy(forward(model, theta, xb), y_l[idx])
                opt_sigma.step(sigma, loss)
                losses_l.append(float(loss.detach()))
            if step < len(unl):
                idx = unl[step].to(device)
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
                theta = {k: sigma[k].detach() + psi[k] for k in sigma}
                logits = forward(model, theta, torch.cat([weak, strong]))
                local, local_strong = logits[: len(idx)], logits[len(idx) :]
                with torch.no_grad():
                    helper_probs = (
                        torch.stack([forward(model, h, weak).softmax(1) for h in helpers])
                        if helpers
                        else local.new_zeros(0, *local.shape)
                    )
                agree = agreement_pseudo_labels(
                    local.detach().softmax(1),
                    helper_probs,
                    confidence=p.confidence_threshold,
                    agreement=p.agreement,
                )
                loss = (
                    p.lambda_i * consistency_loss(local, helper_probs, agree.confident)
                    + p.lambda_a
                    * masked_cross_entropy(local_strong, agree.pseudo_label, agree.keep)
                    + decomposition_penalty(
                        {k: v.detach() for k, v in sigma.items()},
                        psi,
                        lambda_l1=p.lambda_l1,
                        lambda_l2=p.lambda_l2,
                    )
                )
                opt_psi.step(psi, loss)
                losses_u.append(float(loss.detach()))
                seen += len(idx)
                kept += int(agree.keep.sum())
                if truth is not None:
                    correct += int(((agree.pseudo_label == truth[idx]) & agree.keep).sum())
        new_state = {
            **{SIGMA + k: v.detach() for k, v in sigma.items()},
            **{PSI + k: v.detach() for k, v in psi.items()},
        }
        metrics = {
            "num_labeled": data.num_labeled,
            "num_unlabeled": seen,
            "num_kept": kept,
            "num_helper_models": len(helpers),
            "loss_labeled": float(np.mean(losses_l)) if losses_l else 0.0,
            "loss_unlabeled": float(np.mean(losses_u)) if losses_u else 0.0,
        }
        if truth is not None:
            metrics["num_kept_correct"] = correct
        return ClientUpdate(
            client_id=data.client_id,
            deltas={"model": subtract(new_state, global_params)},
            weight=float(data.num_labeled + data.num_unlabeled),
            metrics=metrics,
        )
