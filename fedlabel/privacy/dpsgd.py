"""DP-SGD (Abadi et al., CCS 2016) pieces for :mod:`fedlabel.training`, with Opacus.

Every SGD step of a client under ``privacy=dpsgd``:
 1. Poisson sampling: each of the n records of the branch's data set joins the batch
    independently with probability q = min(1, batch_size / n) (Opacus's DPDataLoader);
 2. per-record gradients from Opacus's :class:`~opacus.GradSampleModule` (hooks on every layer);
 3. each record's gradient clipped to L2 norm C = ``max_grad_norm``;
 4. g = (sum of clipped gradients + N(0, (z C)^2 I)) / (q n), z = ``noise_multiplier``.
An empty Poisson batch is skipped for the forward/backward pass (there is nothing to
differentiate) but its noise step is still taken and counted: skipping the release altogether
would reveal that the batch was empty, which the subsampled-Gaussian analysis does not cover.

The DP settings reach training through a context (:func:`dpsgd_session`) opened around one
client's update, so every algorithm that trains through ``batch_indices``/``sgd_train`` is
private without code of its own. Each ``sgd_train`` call appends (z, q, steps) to the session's
ledger; the client reports the ledger and the server composes it (:mod:`fedlabel.privacy.accountant`).

What the guarantee covers: record-level (epsilon, delta)-DP of the parameters a client uploads,
over all its rounds, with the global model public. FedLabel's pseudo-labels come from the public
global model and the client's local model, itself a DP release of the labeled branch, so each
unlabeled record's pseudo-label depends only on that record and DP/public outputs; the
accountant composes both branches. Not covered: the counts and losses clients report as metrics
and aggregation weights (e.g. FedLabel's r_k = |D_L| + #kept), and FedLabel's choice to take no
unlabeled steps when no sample passes beta. The noise comes from a seeded torch generator
(reproducible runs), not a cryptographically secure one.

Contract for a loss under DP-SGD: ``loss_fn(f, batch)`` gets a 1-D tensor of the n sampled record
indices; it returns the mean over these records of per-record terms, and every call ``f(x)``
passes rows that are k stacked views of these records in batch order (row j is record j mod n).
Outputs used only as targets (pseudo-labels, teachers) must be computed under ``torch.no_grad()``
(Opacus keeps the activations of every forward pass that records gradients until its backward).
Parameter-only terms (weight decay, proximal terms) belong in the SGD update, not in the loss.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

WRAPPED_PREFIX = "_module."  # Opacus's GradSampleModule prefixes state_dict keys with this


@dataclass(frozen=True)
class DpSgdSettings:
    noise_multiplier: float
    max_grad_norm: float


@dataclass
class DpSgdSession:
    """The DP state of one client update: settings, the noise generator, the generator of the
    Poisson batches (None: the training loop's own), and the ledger of (noise_multiplier,
    sample_rate, steps) of every private training loop run so far."""

    settings: DpSgdSettings
    generator: torch.Generator
    sampler: torch.Generator | None = None
    ledger: list[tuple[float, float, int]] = field(default_factory=list)
    last_draw: tuple[float, int, int] | None = None  # latest Poisson draw: (q, records, batches)


_session: DpSgdSession | None = None


@contextlib.contextmanager
def dpsgd_session(settings: DpSgdSettings, *, generator: torch.Generator,
                  sampler: torch.Generator | None = None) -> Iterator[DpSgdSession]:  # fmt: skip
    """Run the enclosed client update with DP-SGD; yields the session (its ledger)."""
    global _session
    if _session is not None:
        raise RuntimeError("a DP-SGD session is already open")
    _session = DpSgdSession(settings, generator, sampler)
    try:
        yield _session
    finally:
        _session = None


def active_session() -> DpSgdSession | None:
    return _session


def poisson_batches(n: int, *, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` Poisson batches over n records with rate q = min(1, batch_size / n): each
    record joins each batch independently with probability q (batches may be empty)."""
    q = min(1.0, batch_size / n)
    return [torch.nonzero(torch.rand(n, generator=generator) < q).flatten() for _ in range(steps)]


# --------------------------------------------------------------------------------------------
# Opacus's wrapped module and its state_dict keys


_wrapped: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {device: GradSampleModule}


def grad_sample_module(model: nn.Module, device: torch.device) -> nn.Module:
    """A GradSampleModule around a private copy of ``model`` on ``device`` (cached per model),
    so the shared skeleton never carries Opacus's hooks. (Opacus is imported here, not at module
    load: it costs seconds, and runs without DP-SGD never need it.)"""
    from opacus import GradSampleModule

    per_device = _wrapped.setdefault(model, {})
    if device not in per_device:
        per_device[device] = GradSampleModule(copy.deepcopy(model).to(device).train(), loss_reduction="sum")
    return per_device[device]


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
    per-record gradients of that record's own term: rows j, j+n, j+2n... belong to record j,
    and the mean's 1/n is undone."""
    rows = grad_sample.shape[0]
    if rows % num_records:
        raise ValueError(f"{rows} gradient rows for {num_records} records: rows must be k stacked views of the batch")
    return grad_sample.reshape(rows // num_records, num_records, *grad_sample.shape[1:]).sum(0) * num_records


def clip_and_sum(per_record: list[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """Scale each record's gradient (over all parameters together) to L2 norm <= C, then sum
    over records: sum_i g_i min(1, C / ||g_i||) (Opacus's flat clipping)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_record]).norm(dim=0)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("i,i...->...", factor, g) for g in per_record]


def noisy_mean(clipped_sum: list[torch.Tensor], *, settings: DpSgdSettings, expected_batch_size: float,
               generator: torch.Generator) -> list[torch.Tensor]:  # fmt: skip
    """(sum + N(0, (z C)^2)) / expected batch size: the privatized gradient."""
    std = settings.noise_multiplier * settings.max_grad_norm
    out = []
    for s in clipped_sum:
        noise = torch.normal(0.0, std, s.shape, generator=generator).to(s.device)
        out.append((s + noise) / expected_batch_size)
    return out
