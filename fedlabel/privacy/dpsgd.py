"""DP-SGD (Abadi et al., CCS 2016) pieces for :mod:`fedlabel.training`, with Opacus.

Every SGD step of a client under ``privacy=dpsgd``:
 1. Poisson sampling: each of the n records of the branch's data set joins the batch
    independently with probability q = min(1, batch_size / n) (Opacus's DPDataLoader);
 2. per-record gradients (in the mode ``grad_sample_mode``, :data:`GRAD_SAMPLE_MODES`);
 3. each record's gradient clipped to L2 norm C = ``max_grad_norm``;
 4. g = (sum of clipped gradients + N(0, (z C)^2 I)) / (q n), z = ``noise_multiplier``.
An empty Poisson batch is skipped for the forward/backward pass (there is nothing to
differentiate) but its noise step is still taken and counted: skipping the release altogether
would reveal that the batch was empty, which the subsampled-Gaussian analysis does not cover.

The DP settings reach training as the trainer of the client's
:class:`~fedlabel.training.ClientContext` (:class:`DpSgd`), so every algorithm that trains through
its context's ``batches``/``train`` is private without code of its own. Each ``train`` call
appends (z, q, steps) to the trainer's ledger; the client reports the ledger and the server
composes it (:mod:`fedlabel.privacy.accountant`).

What the guarantee covers: record-level (epsilon, delta)-DP of the parameters a client uploads,
over all its rounds, with the global model public. FedLabel's pseudo-labels come from the public
global model and the client's local model, itself a DP release of the labeled branch, so each
unlabeled record's pseudo-label depends only on that record and DP/public outputs; the
accountant composes both branches. Not covered: the counts and losses clients report as metrics
and aggregation weights (e.g. FedLabel's r_k = |D_L| + #kept), and FedLabel's choice to take no
unlabeled steps when no sample passes beta. In simulation the noise comes from a seeded torch
generator (reproducible runs); privacy.secure_noise (always on at deployed sites) draws noise and
batches from the OS's entropy (:mod:`fedlabel.privacy.noise`).

Contract for a loss under DP-SGD: ``loss_fn(f, batch)`` gets a 1-D tensor of the n sampled record
indices; it returns the mean over these records of per-record terms, and every call ``f(x)``
passes rows that are k stacked views of these records in batch order (row j is record j mod n).
Outputs used only as targets (pseudo-labels, teachers) must be computed under ``torch.no_grad()``
(Opacus keeps the activations of every forward pass that records gradients until its backward).
Parameter-only terms (weight decay, proximal terms) belong in the SGD update, not in the loss.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from fedlabel.config import GRAD_SAMPLE_MODES
from fedlabel.privacy.bookkeeping import BookKeeping
from fedlabel.training import LossFn, Params, Sgd, SgdConfig, sgd_step

WRAPPED_PREFIX = "_module."  # Opacus's GradSampleModule prefixes state_dict keys with this

# How the clipped sum of per-record gradients is computed, all giving the same sum (to float
# tolerance): "bk" (one backward pass, no per-record gradients of linear layers:
# fedlabel.privacy.bookkeeping; the fastest on the default CNN, see docs/privacy.md "DP-SGD's
# cost"), or Opacus's per-sample gradients: "ew" (PyTorch's expanded weights), "hooks" (Opacus's
# default: a hook on every layer), "functorch" (torch.func vmap + grad for every layer). The names:
# fedlabel.config.GRAD_SAMPLE_MODES, where the config checks them.


@dataclass(frozen=True)
class DpSgdSettings:
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str = "bk"  # one of GRAD_SAMPLE_MODES


@dataclass
class DpSgd(Sgd):
    """The trainer of one client update under DP-SGD: Poisson batches (from ``sampler``, or the
    context's generator when None), clipped per-record gradients and Gaussian noise from
    ``generator``, and the ledger of (noise_multiplier, sample_rate, steps) of every training
    loop run so far."""

    settings: DpSgdSettings
    generator: torch.Generator
    sampler: torch.Generator | None = None
    ledger: list[tuple[float, float, int]] = field(default_factory=list)
    last_draw: tuple[float, int, int] | None = None  # latest Poisson draw: (q, records, batches)

    def batches(
        self, n: int, *, batch_size: int, steps: int, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """``steps`` Poisson batches of expected size batch_size (see :func:`poisson_batches`)."""
        if n == 0 or steps == 0:
            return []
        out = poisson_batches(
            n,
            batch_size=batch_size,
            steps=steps,
            generator=generator if self.sampler is None else self.sampler,
        )
        self.last_draw = (min(1.0, batch_size / n), n, len(out))
        return out

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
        """DP-SGD steps: Opacus per-sample gradients on the Poisson batches of the latest
        :meth:`batches` call, clipped and noised; empty batches take a noise-only step. FedProx's
        proximal gradient mu (w - center) depends on no data and is added after the noise."""
        if not batches:
            return super().train(
                model, params, batches=batches, loss_fn=loss_fn, sgd=sgd, prox_mu=prox_mu
            )
        if not all(isinstance(b, torch.Tensor) and b.dim() == 1 for b in batches):
            raise RuntimeError(
                "DP-SGD: each batch must be one tensor of record indices (one record set per step)"
            )
        if self.last_draw is None or self.last_draw[2] != len(batches):
            raise RuntimeError(
                "DP-SGD: the batches trained on must be the Poisson batches of the latest draw"
            )
        (q, num_records, _), settings = self.last_draw, self.settings
        self.last_draw = None
        center = {k: v.detach().clone() for k, v in params.items()} if prox_mu else None
        device = next(iter(params.values())).device
        gsm = grad_sample_module(model, device, settings.grad_sample_mode)
        gsm.load_state_dict(to_wrapped(params))  # Opacus's keys carry the "_module." prefix
        weights = dict(gsm.named_parameters())
        velocity = {k: torch.zeros_like(v) for k, v in weights.items()} if sgd.momentum else None
        total, nonempty = 0.0, 0
        for batch in batches:
            n = len(batch)
            if n == 0:  # nothing to differentiate: the noise-only step of an empty Poisson batch
                clipped = [torch.zeros_like(w) for w in weights.values()]
            elif isinstance(gsm, BookKeeping):
                loss = loss_fn(lambda x: gsm(x), batch)
                clipped = gsm.clipped_sum(loss, n, settings.max_grad_norm)
                total, nonempty = total + float(loss.detach()), nonempty + 1
            else:
                loss = loss_fn(lambda x: gsm(x), batch)
                with (
                    warnings.catch_warnings()
                ):  # Opacus's hooks on an input needing no grad: harmless
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                per_record = [
                    (
                        per_record_gradients(w.grad_sample, n)
                        if w.grad_sample is not None
                        else w.new_zeros(n, *w.shape)
                    )
                    for w in weights.values()
                ]
                # the mean's 1/n is undone in the clipping factor (one pass less over the
                # largest per-record tensors than scaling them)
                clipped = clip_and_sum(per_record, settings.max_grad_norm, scale=n)
                for w in weights.values():
                    w.grad, w.grad_sample = None, None
                total, nonempty = total + float(loss.detach()), nonempty + 1
            grads = noisy_mean(
                clipped,
                settings=settings,
                expected_batch_size=q * num_records,
                generator=self.generator,
            )
            if center is not None:
                grads = [
                    g + prox_mu * (w.detach() - center[k[len(WRAPPED_PREFIX) :]])
                    for g, (k, w) in zip(grads, weights.items())
                ]
            sgd_step(weights, grads, velocity, sgd)
        self.ledger.append((settings.noise_multiplier, q, len(batches)))
        out = {k: v.detach().clone() for k, v in from_wrapped(gsm.state_dict()).items()}
        return out, total / max(nonempty, 1)


def poisson_batches(
    n: int, *, batch_size: int, steps: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """``steps`` Poisson batches over n records with rate q = min(1, batch_size / n): each
    record joins each batch independently with probability q (batches may be empty)."""
    q = min(1.0, batch_size / n)
    return [torch.nonzero(torch.rand(n, generator=generator) < q).flatten() for _ in range(steps)]


# --------------------------------------------------------------------------------------------
# Opacus's wrapped module and its state_dict keys


_wrapped: weakref.WeakKeyDictionary = (
    weakref.WeakKeyDictionary()
)  # model -> {(device, mode): Opacus grad-sample module}


def grad_sample_module(model: nn.Module, device: torch.device, mode: str = "bk") -> nn.Module:
    """The grad-sample module of ``mode`` (:data:`GRAD_SAMPLE_MODES`: a
    :class:`~fedlabel.privacy.bookkeeping.BookKeeping` or Opacus's) around a private copy of
    ``model`` on ``device`` (cached per model), so the shared skeleton never carries hooks.
    (Opacus is imported here, not at module load: it costs seconds, and runs without DP-SGD
    never need it.)"""
    from opacus import GradSampleModule
    from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights

    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {mode!r}")
    per_key = _wrapped.setdefault(model, {})
    if (device, mode) not in per_key:
        copied = copy.deepcopy(model).to(device).train()
        if mode == "bk":
            per_key[device, mode] = BookKeeping(copied)
        elif mode == "ew":
            per_key[device, mode] = GradSampleModuleExpandedWeights(copied, loss_reduction="sum")
        else:
            per_key[device, mode] = GradSampleModule(
                copied, loss_reduction="sum", force_functorch=mode == "functorch"
            )
    return per_key[device, mode]


def to_wrapped(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain parameter names -> the keys of a GradSampleModule's state_dict."""
    return {WRAPPED_PREFIX + k: v for k, v in params.items()}


def from_wrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GradSampleModule's state_dict -> plain parameter names (the model's own keys)."""
    bad = [k for k in state if not k.startswith(WRAPPED_PREFIX)]
    if bad:
        raise KeyError(f"not an Opacus-wrapped state_dict key: {bad[0]!r}")
    return {k[len(WRAPPED_PREFIX) :]: v for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# Pure tensor functions


def per_record_gradients(grad_sample: torch.Tensor, num_records: int) -> torch.Tensor:
    """Opacus per-row gradients of a mean-over-records loss (loss_reduction="sum") ->
    per-record gradients of that mean: rows j, j+n, j+2n... belong to record j (record j's own
    term's gradient is n times this)."""
    rows = grad_sample.shape[0]
    if rows % num_records:
        raise ValueError(
            f"{rows} gradient rows for {num_records} records: rows must be k stacked views of the"
            " batch"
        )
    if rows == num_records:
        return grad_sample
    return grad_sample.reshape(rows // num_records, num_records, *grad_sample.shape[1:]).sum(0)


def clip_and_sum(
    per_record: list[torch.Tensor], max_grad_norm: float, *, scale: float = 1.0
) -> list[torch.Tensor]:
    """Scale each record's gradient g_i = ``scale`` x its row of ``per_record`` (over all
    parameters together) to L2 norm <= C, then sum over records: sum_i g_i min(1, C / ||g_i||)
    (Opacus's flat clipping)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_record]).norm(dim=0) * scale
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * scale
    return [(factor @ g.flatten(1)).view(g.shape[1:]) for g in per_record]


def noisy_mean(
    clipped_sum: list[torch.Tensor],
    *,
    settings: DpSgdSettings,
    expected_batch_size: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """(sum + N(0, (z C)^2)) / expected batch size: the privatized gradient."""
    std = settings.noise_multiplier * settings.max_grad_norm
    out = []
    for s in clipped_sum:
        noise = torch.normal(0.0, std, s.shape, generator=generator).to(s.device)
        out.append((s + noise) / expected_batch_size)
    return out
