"""Pure training helpers: SGD on parameter dicts through torch.func.functional_call.

Client training is a pure function of (parameters, batches, generator) so that the same code
can later run for many clients at once; models hold no buffers, so parameters are the state.
An algorithm's client update is handed a :class:`ClientContext`: its device, its generator and
its trainer, which draws the minibatches and runs the SGD loop. Plain SGD is :class:`Sgd`;
privacy=dpsgd hands :class:`fedlabel.privacy.dpsgd.DpSgd` instead (Poisson batches, clipped and
noised steps), so every algorithm that trains through its context inherits DP-SGD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SgdConfig:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


def get_params(model: nn.Module) -> Params:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def zeros_like(params: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in params.items()}


def add_scaled(acc: Params, delta: Params, scale: float) -> None:
    for k in acc:
        acc[k].add_(delta[k].to(acc[k].device), alpha=scale)


def subtract(a: Params, b: Params) -> Params:
    return {k: (a[k] - b[k]).detach() for k in a}


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x,))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images.float().div_(255.0)


def batch_indices(
    n: int, *, batch_size: int, steps: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """`steps` minibatches of min(batch_size, n) indices, drawn epoch by epoch without
    replacement from a fresh permutation (the last partial batch of an epoch is dropped)."""
    if n == 0 or steps == 0:
        return []
    b = min(batch_size, n)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=generator)
        out.extend(perm[i : i + b] for i in range(0, n - b + 1, b))
    return out[:steps]


def proximal_term(params: Params, center: Params, *, mu: float) -> torch.Tensor:
    """FedProx's proximal term mu/2 ||w - w_center||^2 (Li et al., MLSys 2020, eq. 2)."""
    return 0.5 * mu * cast(torch.Tensor, sum(((params[k] - center[k]) ** 2).sum() for k in params))


LossFn = Callable[[Callable[[torch.Tensor], torch.Tensor], Any], torch.Tensor]


def sgd_train(
    model: nn.Module,
    params: Params,
    *,
    batches: list,
    loss_fn: LossFn,
    sgd: SgdConfig,
    prox_mu: float = 0.0,
) -> tuple[Params, float]:
    """Run one SGD step per batch from ``params``; returns (new params, mean loss).

    ``loss_fn(f, batch)`` gets ``f = x -> logits`` under the current parameters. With
    ``prox_mu`` > 0 every step also descends FedProx's mu/2 ||w - params||^2 (the starting point,
    i.e. the global model); the returned mean loss is loss_fn's alone."""
    center = {k: v.detach().clone() for k, v in params.items()} if prox_mu else None
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    velocity = zeros_like(params) if sgd.momentum else None
    total = 0.0
    for batch in batches:
        loss = loss_fn(lambda x: forward(model, params, x), batch)
        objective = loss + proximal_term(params, center, mu=prox_mu) if center is not None else loss
        grads = torch.autograd.grad(objective, list(params.values()))
        sgd_step(params, grads, velocity, sgd)
        total += float(loss.detach())
    return {k: v.detach() for k, v in params.items()}, total / max(len(batches), 1)


@torch.no_grad()
def sgd_step(params: Params, grads, velocity: Params | None, sgd: SgdConfig) -> None:
    """The SGD step, in place: g += wd * w; v = m * v + g (momentum); w -= lr * g."""
    for (k, p), g in zip(params.items(), grads):
        if sgd.weight_decay:
            g = g.add(p, alpha=sgd.weight_decay)
        if velocity is not None:
            g = velocity[k].mul_(sgd.momentum).add_(g)
        p.sub_(g, alpha=sgd.lr)


class Sgd:
    """How a client trains without DP: shuffled minibatches (:func:`batch_indices`) and plain
    SGD steps (:func:`sgd_train`)."""

    def batches(
        self, n: int, *, batch_size: int, steps: int, generator: torch.Generator
    ) -> list[torch.Tensor]:
        return batch_indices(n, batch_size=batch_size, steps=steps, generator=generator)

    def train(
        self,
        model: nn.Module,
        params: Params,
        *,
        batches: list,
        loss_fn: LossFn,
        sgd: SgdConfig,
        prox_mu: float = 0.0,
    ) -> tuple[Params, float]:
        return sgd_train(model, params, batches=batches, loss_fn=loss_fn, sgd=sgd, prox_mu=prox_mu)


@dataclass(frozen=True)
class ClientContext:
    """What one client update is handed: where it runs, its one source of randomness (batches,
    augmentation) and its trainer (plain :class:`Sgd`, or DP-SGD under privacy=dpsgd)."""

    device: torch.device
    generator: torch.Generator
    trainer: Sgd = field(default_factory=Sgd)

    def batches(self, n: int, *, batch_size: int, steps: int) -> list[torch.Tensor]:
        """``steps`` batches of record indices out of n (shuffled; Poisson under DP-SGD)."""
        return self.trainer.batches(n, batch_size=batch_size, steps=steps, generator=self.generator)

    def train(
        self,
        model: nn.Module,
        params: Params,
        *,
        batches: list,
        loss_fn: LossFn,
        sgd: SgdConfig,
        prox_mu: float = 0.0,
    ) -> tuple[Params, float]:
        """One step per batch of ``batches`` (from :meth:`batches`) from ``params``."""
        return self.trainer.train(
            model, params, batches=batches, loss_fn=loss_fn, sgd=sgd, prox_mu=prox_mu
        )


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    params: Params,
    images: torch.Tensor,
    *,
    device: torch.device,
    chunk: int = 256,
) -> torch.Tensor:
    """Logits for uint8 images, computed in chunks on ``device``; returned on ``device``."""
    if len(images) == 0:
        return forward(model, params, torch.zeros(1, *images.shape[1:], device=device))[
            :0
        ]  # N x C with N = 0
    outs = [
        forward(model, params, to_float(images[i : i + chunk].to(device)))
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(outs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a labeled set."""
    return scores(predict_logits(model, params, images, device=device), labels)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of N x C ``logits`` against ``labels``."""
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, loss


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device")
    return torch.device(name)
