"""Pure training helpers: SGD on parameter dicts through torch.func.functional_call.

Client training is a pure function of (parameters, batches, generator) so that the same code
can later run for many clients at once; models hold no buffers, so parameters are the state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def batch_indices(n: int, *, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
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
    return 0.5 * mu * sum(((params[k] - center[k]) ** 2).sum() for k in params)


def sgd_train(
    model: nn.Module,
    params: Params,
    *,
    batches: list,
    loss_fn: Callable[[Callable[[torch.Tensor], torch.Tensor], object], torch.Tensor],
    sgd: SgdConfig,
    prox_mu: float = 0.0,
) -> tuple[Params, float]:
    """Run one SGD step per batch from ``params``; returns (new params, mean loss).

    ``loss_fn(f, batch)`` gets ``f = x -> logits`` under the current parameters. With
    ``prox_mu`` > 0 every step also descends FedProx's mu/2 ||w - params||^2 (the starting point,
    i.e. the global model); the returned mean loss is loss_fn's alone."""
    center = {k: v.detach().clone() for k, v in params.items()} if prox_mu else None
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if sgd.momentum else None
    total = 0.0
    for batch in batches:
        loss = loss_fn(lambda x: forward(model, params, x), batch)
        objective = loss + proximal_term(params, center, mu=prox_mu) if center is not None else loss
        grads = torch.autograd.grad(objective, list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                if sgd.weight_decay:
                    g = g.add(p, alpha=sgd.weight_decay)
                if velocity is not None:
                    g = velocity[k].mul_(sgd.momentum).add_(g)
                p.sub_(g, alpha=sgd.lr)
        total += float(loss.detach())
    return {k: v.detach() for k, v in params.items()}, total / max(len(batches), 1)


@torch.no_grad()
def predict_logits(model: nn.Module, params: Params, images: torch.Tensor, *, device: torch.device, chunk: int = 256) -> torch.Tensor:
    """Logits for uint8 images, computed in chunks on ``device``; returned on ``device``."""
    if len(images) == 0:
        return forward(model, params, torch.zeros(1, *images.shape[1:], device=device))[:0]  # N x C with N = 0
    outs = [forward(model, params, to_float(images[i : i + chunk].to(device))) for i in range(0, len(images), chunk)]
    return torch.cat(outs)


@torch.no_grad()
def evaluate(model: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on a labeled set."""
    logits = predict_logits(model, params, images, device=device)
    labels = labels.to(device)
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, loss


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device")
    return torch.device(name)
