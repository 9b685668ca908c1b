"""Pure training helpers: SGD on parameter dicts through torch.func.functional_call.

Client training is a pure function of (parameters, batches, generator) so that the same code
can later run for many clients at once; models hold no buffers, so parameters are the state.
Inside :func:`fedlabel.privacy.dpsgd.dpsgd_session` (privacy=dpsgd) ``batch_indices`` draws
Poisson batches and ``sgd_train`` takes DP-SGD steps, so every algorithm inherits DP-SGD.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedlabel.privacy import dpsgd

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
    replacement from a fresh permutation (the last partial batch of an epoch is dropped).
    Under DP-SGD: `steps` Poisson batches of expected size batch_size instead, drawn from the
    session's sampler when it has one (privacy.secure_noise)."""
    if n == 0 or steps == 0:
        return []
    session = dpsgd.active_session()
    if session is not None:
        sampler = generator if session.sampler is None else session.sampler
        out = dpsgd.poisson_batches(n, batch_size=batch_size, steps=steps, generator=sampler)
        session.last_draw = (min(1.0, batch_size / n), n, len(out))
        return out
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
    if dpsgd.active_session() is not None and batches:
        return _dp_sgd_train(model, params, batches=batches, loss_fn=loss_fn, sgd=sgd, center=center, prox_mu=prox_mu)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if sgd.momentum else None
    total = 0.0
    for batch in batches:
        loss = loss_fn(lambda x: forward(model, params, x), batch)
        objective = loss + proximal_term(params, center, mu=prox_mu) if center is not None else loss
        grads = torch.autograd.grad(objective, list(params.values()))
        _sgd_step(params, grads, velocity, sgd)
        total += float(loss.detach())
    return {k: v.detach() for k, v in params.items()}, total / max(len(batches), 1)


@torch.no_grad()
def _sgd_step(params: Params, grads, velocity: Params | None, sgd: SgdConfig) -> None:
    for (k, p), g in zip(params.items(), grads):
        if sgd.weight_decay:
            g = g.add(p, alpha=sgd.weight_decay)
        if velocity is not None:
            g = velocity[k].mul_(sgd.momentum).add_(g)
        p.sub_(g, alpha=sgd.lr)


def _dp_sgd_train(model: nn.Module, params: Params, *, batches: list, loss_fn, sgd: SgdConfig,
                  center: Params | None, prox_mu: float) -> tuple[Params, float]:  # fmt: skip
    """sgd_train's DP-SGD path (fedlabel.privacy.dpsgd): Opacus per-sample gradients on Poisson
    batches, clipped and noised; empty batches take a noise-only step. FedProx's proximal
    gradient mu (w - center) depends on no data and is added after the noise. Appends
    (z, q, steps) to the session's ledger."""
    session = dpsgd.active_session()
    if not all(isinstance(b, torch.Tensor) and b.dim() == 1 for b in batches):
        raise RuntimeError("DP-SGD: each batch must be one tensor of record indices (one record set per step)")
    if session.last_draw is None or session.last_draw[2] != len(batches):
        raise RuntimeError("DP-SGD: sgd_train's batches must be the Poisson batches of the latest batch_indices call")
    (q, num_records, _), settings = session.last_draw, session.settings
    session.last_draw = None
    device = next(iter(params.values())).device
    gsm = dpsgd.grad_sample_module(model, device)
    gsm.load_state_dict(dpsgd.to_wrapped(params))  # Opacus's keys carry the "_module." prefix
    weights = dict(gsm.named_parameters())
    velocity = {k: torch.zeros_like(v) for k, v in weights.items()} if sgd.momentum else None
    expected_batch_size = q * num_records
    total, nonempty = 0.0, 0
    for batch in batches:
        n = len(batch)
        if n == 0:  # nothing to differentiate: the noise-only step of an empty Poisson batch
            clipped = [torch.zeros_like(w) for w in weights.values()]
        else:
            loss = loss_fn(lambda x: gsm(x), batch)
            with warnings.catch_warnings():  # Opacus's hooks on an input that needs no grad: harmless
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            per_record = [dpsgd.per_record_gradients(w.grad_sample, n) if w.grad_sample is not None
                          else w.new_zeros(n, *w.shape) for w in weights.values()]  # fmt: skip
            clipped = dpsgd.clip_and_sum(per_record, settings.max_grad_norm)
            for w in weights.values():
                w.grad, w.grad_sample = None, None
            total, nonempty = total + float(loss.detach()), nonempty + 1
        grads = dpsgd.noisy_mean(clipped, settings=settings, expected_batch_size=expected_batch_size,
                                 generator=session.generator)  # fmt: skip
        if center is not None:
            grads = [g + prox_mu * (w.detach() - center[k[len(dpsgd.WRAPPED_PREFIX) :]]) for g, (k, w) in zip(grads, weights.items())]
        _sgd_step(weights, grads, velocity, sgd)
    session.ledger.append((settings.noise_multiplier, q, len(batches)))
    out = {k: v.detach().clone() for k, v in dpsgd.from_wrapped(gsm.state_dict()).items()}
    return out, total / max(nonempty, 1)


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
