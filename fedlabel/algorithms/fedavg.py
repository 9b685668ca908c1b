"""FedAvg (McMahan et al., 2017) on each client's labeled part only, with FedProx's proximal
term as the option ``mu`` (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020): mu > 0 adds mu/2 ||w - w_global||^2 (the paper's eq. 2) to every local SGD step.

With data.label_ratio=1.0 every sample is labeled and this is the fully supervised reference
("FedAvg/FedProx, 100% labels"). The client weight r_k is the number of labeled samples (the
weight FedProx uses too, n_k).

``algorithm=fedprox`` is this algorithm with mu=FEDPROX_MU (fedlabel.algorithms registers it).
Choices FedProx leaves open, as config values (defaults and why):
 - mu=0.01: FedProx tunes mu per data set over {0.001, 0.01, 0.1, 1}; 0.01 is a middle value
   from that grid. With 10 local steps of lr 0.05 the term changes little (it pulls
   by lr*mu = 5e-4 of the distance per step); larger mu trades progress for drift.
 - a fixed number of local steps (tau) for every client: FedProx also allows inexact, variable
   local work per client; the simulator gives every client the same work, like FedAvg here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fedlabel.algorithms.base import Algorithm, AlgorithmParams, ClientUpdate
from fedlabel.algorithms.batching import (
    BatchedUpdate,
    ClientImages,
    Stacked,
    batches,
    minus,
    padded,
    row,
    sgd_step,
    stack,
)
from fedlabel.augment import WeakDraws, apply_weak, draw_weak, weak_augment
from fedlabel.data import ClientData
from fedlabel.errors import check
from fedlabel.llp.train import bag_objective
from fedlabel.training import ClientContext, LossFn, Params, proximal_term, subtract, to_float


def train_labeled(
    model: nn.Module,
    global_params: Params,
    data: ClientData,
    p: AlgorithmParams,
    ctx: ClientContext,
    *,
    mu: float = 0.0,
    extra: tuple[list, LossFn] | None = None,
) -> tuple[Params, float]:
    """The supervised branch: tau SGD steps of cross-entropy on weakly augmented labeled
    batches, starting from the global model. Returns (local params w_L, mean loss). A bagged
    client (data.bags) trains on whole bags with a bag-level loss instead (fedlabel.llp.train).

    ``mu`` > 0 adds FedProx's proximal term mu/2 ||w - w_global||^2 to every step. ``extra`` =
    (batches, loss_fn) adds one more loss per step (FixMatch/UDA train on labeled and unlabeled
    batches in the same step): step i minimises labeled CE on labeled batch i plus
    loss_fn(f, batches[i]); either part is absent when its list is shorter, and the mean loss
    returned is that of the sum."""
    if data.bags is not None:
        batches, loss_fn = bag_objective(model, global_params, data.bags, p, ctx)
    else:
        batches, loss_fn = _instance_objective(data, p, ctx)
    if extra is not None:
        batches, loss_fn = _joint(batches, loss_fn, *extra)
    return ctx.train(
        model, global_params, batches=batches, loss_fn=loss_fn, sgd=p.sgd(), prox_mu=mu
    )


def _instance_objective(data: ClientData, p: AlgorithmParams, ctx: ClientContext):
    """(batches, loss_fn) of cross-entropy on weakly augmented labeled batches."""
    device = ctx.device
    x, y = data.labeled_images.to(device), data.labeled_labels.to(device)
    batches = ctx.batches(data.num_labeled, batch_size=p.batch_size, steps=p.local_steps)

    def loss_fn(f, idx: torch.Tensor) -> torch.Tensor:
        xb = to_float(x[idx.to(device)])
        if p.weak_shift:
            xb = weak_augment(xb, generator=ctx.generator, max_shift=p.weak_shift)
        return F.cross_entropy(f(xb), y[idx.to(device)])

    return batches, loss_fn


def _joint(
    labeled: list, labeled_loss: LossFn, extra: list, extra_loss: LossFn
) -> tuple[list, LossFn]:
    """Pair batch i of both lists; the step's loss is the sum of the parts present."""
    pairs = [
        (labeled[i] if i < len(labeled) else None, extra[i] if i < len(extra) else None)
        for i in range(max(len(labeled), len(extra)))
    ]

    def loss_fn(f, pair) -> torch.Tensor:  # every pair holds at least one batch: a Tensor sum
        return cast(
            torch.Tensor,
            sum(fn(f, b) for fn, b in zip((labeled_loss, extra_loss), pair) if b is not None),
        )

    return pairs, loss_fn


FEDPROX_MU = 0.01  # mu of the fedprox presets


@dataclass(frozen=True)
class FedAvgParams(AlgorithmParams):
    """The supervised branch's params plus FedProx's mu (also the base of FixMatch's and UDA's)."""

    name: str = "fedavg"
    mu: float = 0.0  # proximal coefficient: mu/2 ||w - w_global||^2 every local step (0 = FedAvg)

    def validate(self) -> None:
        super().validate()
        check(self.mu >= 0, "algorithm.mu", f"must be >= 0 (0 = FedAvg), got {self.mu}")


class FedAvg(Algorithm[FedAvgParams]):
    dpsgd_supported = True
    Params = FedAvgParams
    trains_on_bags = True

    def client_update(self, model, global_params, data, ctx, *, extras=None) -> ClientUpdate:
        local, loss = train_labeled(model, global_params, data, self.params, ctx, mu=self.params.mu)
        return labeled_update(data, subtract(local, global_params), loss)


def labeled_update(data: ClientData, delta: Params, loss: float) -> ClientUpdate:
    """FedAvg's upload: the delta, weighted by the number of labeled samples."""
    return ClientUpdate(
        client_id=data.client_id,
        deltas={"model": delta},
        weight=float(data.num_labeled),
        metrics={"num_labeled": data.num_labeled, "loss_labeled": loss},
    )


# --------------------------------------------------------------------------------------------
# Batched (engine=vectorized): see fedlabel.algorithms.batching


class BatchedLabeled:
    """:func:`train_labeled` of instance-labeled clients (no bags, no extra loss), a chunk at
    once."""

    def __init__(
        self,
        model: nn.Module,
        p: AlgorithmParams,
        clients: list[ClientData],
        device: torch.device,
        *,
        mu: float,
    ) -> None:
        self.p, self.device, self.sgd = p, device, p.sgd()
        self.images = ClientImages(
            [c.labeled_images for c in clients], [c.labeled_labels for c in clients], device
        )
        self.sample_shape = tuple(clients[0].labeled_images.shape[1:])

        def loss_fn(
            params: Params, x: Tensor, y: Tensor, mask: Tensor, count: Tensor, center: Params
        ):
            ce = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
            loss = (ce * mask).sum() / count.clamp_min(1)
            objective = (
                loss + proximal_term(params, center, mu=mu) if mu else loss
            )  # FedProx, as sgd_step
            return objective, loss

        self._step = vmap(grad_and_value(loss_fn, has_aux=True), in_dims=(0, 0, 0, 0, 0, None))

    def __call__(
        self, clients: list[ClientData], global_params: Params, gens: list[torch.Generator]
    ) -> tuple[Stacked, list[float]]:
        """(stacked local params w_L, each client's mean loss)."""
        p, c = self.p, len(clients)
        batch_lists, draws = [], []
        for d, g in zip(clients, gens):
            ctx = ClientContext(self.device, g)
            bs = ctx.batches(d.num_labeled, batch_size=p.batch_size, steps=p.local_steps)
            batch_lists.append(bs)
            draws.append(
                [draw_weak(len(b), generator=g, max_shift=p.weak_shift) for b in bs]
                if p.weak_shift
                else []
            )
        steps = torch.tensor([len(bs) for bs in batch_lists])
        index, mask, width = padded(batch_lists, int(steps.max()))
        assert self.images.labels is not None  # labeled images always come with their labels
        # every step's shifts in one tensor, moved to the device once (padding rows: no shift)
        shifts = torch.full((*index.shape, 2), p.weak_shift, dtype=torch.long)
        for i, ds in enumerate(draws):
            for t, dr in enumerate(ds):
                shifts[i, t, : len(dr.offsets)] = dr.offsets
        flat = (index + self.images.starts(clients)[:, None, None]).to(self.device)
        mask, shifts, steps_on = mask.to(self.device), shifts.to(self.device), steps.to(self.device)
        params, velocity = stack(global_params, c, self.sgd)
        total = torch.zeros(c, device=self.device)
        for t in range(index.shape[1]):
            x = to_float(self.images.images[flat[:, t].flatten()])
            if p.weak_shift:
                x = apply_weak(x, WeakDraws(p.weak_shift, shifts[:, t].flatten(0, 1), None))
            x = x.view(c, width, *self.sample_shape)
            m = mask[:, t]
            grads, (_, loss) = self._step(
                params, x, self.images.labels[flat[:, t]], m, m.sum(1), global_params
            )
            active = steps_on > t
            sgd_step(params, velocity, grads, active, self.sgd)
            total += loss.detach() * active
        return params, (total.cpu() / steps.clamp_min(1)).tolist()


@batches(FedAvg)
class FedAvgBatched(BatchedUpdate[FedAvgParams]):
    def __init__(self, model, algorithm, clients, device) -> None:
        super().__init__(model, algorithm, clients, device)
        self.labeled = BatchedLabeled(model, self.p, clients, device, mu=self.p.mu)

    def train(self, clients, global_params, gens) -> list[ClientUpdate]:
        local, loss = self.labeled(clients, global_params, gens)
        delta = minus(local, global_params)
        return [labeled_update(d, row(delta, c), loss[c]) for c, d in enumerate(clients)]
