"""FedAvg (McMahan et al., 2017) on each client's labeled part only.

With data.label_ratio=1.0 every sample is labeled and this is the fully supervised reference.
The client weight r_k is the number of labeled samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedlabel.algorithms.base import Algorithm, AlgorithmParams, ClientUpdate
from fedlabel.augment import weak_augment
from fedlabel.data import ClientData
from fedlabel.llp.train import bag_objective
from fedlabel.training import ClientContext, LossFn, Params, subtract, to_float


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
    return ctx.train(model, global_params, batches=batches, loss_fn=loss_fn, sgd=p.sgd(), prox_mu=mu)


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


def _joint(labeled: list, labeled_loss: LossFn, extra: list, extra_loss: LossFn) -> tuple[list, LossFn]:
    """Pair batch i of both lists; the step's loss is the sum of the parts present."""
    pairs = [(labeled[i] if i < len(labeled) else None, extra[i] if i < len(extra) else None)
             for i in range(max(len(labeled), len(extra)))]  # fmt: skip

    def loss_fn(f, pair) -> torch.Tensor:
        return sum(fn(f, b) for fn, b in zip((labeled_loss, extra_loss), pair) if b is not None)

    return pairs, loss_fn


@dataclass(frozen=True)
class FedAvgParams(AlgorithmParams):
    name: str = "fedavg"


class FedAvg(Algorithm):
    name = "fedavg"
    dpsgd_supported = True
    Params = FedAvgParams
    trains_on_bags = True

    def proximal_mu(self) -> float:
        """FedProx's mu for the supervised branch (0 = plain FedAvg)."""
        return 0.0

    def client_update(self, model, global_params, data, ctx, *, extras=None) -> ClientUpdate:
        local, loss = train_labeled(model, global_params, data, self.params, ctx, mu=self.proximal_mu())
        return ClientUpdate(
            client_id=data.client_id,
            deltas={"model": subtract(local, global_params)},
            weight=float(data.num_labeled),
            metrics={"num_labeled": data.num_labeled, "loss_labeled": loss},
        )
