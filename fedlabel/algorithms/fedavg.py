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
from fedlabel.training import Params, batch_indices, sgd_train, subtract, to_float


def train_labeled(
    model: nn.Module,
    global_params: Params,
    data: ClientData,
    p: AlgorithmParams,
    *,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[Params, float]:
    """The supervised branch: tau SGD steps of cross-entropy on weakly augmented labeled
    batches, starting from the global model. Returns (local params w_L, mean loss)."""
    if data.bags is not None:  # LLP: whole-bag batches and a bag-level loss (fedlabel.llp.train)
        batches, loss_fn = bag_objective(model, global_params, data.bags, p, generator=generator, device=device)
    else:
        batches, loss_fn = _instance_objective(data, p, generator=generator, device=device)
    return sgd_train(model, global_params, batches=batches, loss_fn=loss_fn, sgd=p.sgd())


def _instance_objective(data: ClientData, p: AlgorithmParams, *, generator: torch.Generator, device: torch.device):
    """(batches, loss_fn) of cross-entropy on weakly augmented labeled batches."""
    x, y = data.labeled_images.to(device), data.labeled_labels.to(device)
    batches = batch_indices(data.num_labeled, batch_size=p.batch_size, steps=p.local_steps, generator=generator)

    def loss_fn(f, idx: torch.Tensor) -> torch.Tensor:
        xb = to_float(x[idx.to(device)])
        if p.weak_shift:
            xb = weak_augment(xb, generator=generator, max_shift=p.weak_shift)
        return F.cross_entropy(f(xb), y[idx.to(device)])

    return batches, loss_fn


@dataclass(frozen=True)
class FedAvgParams(AlgorithmParams):
    name: str = "fedavg"


class FedAvg(Algorithm):
    name = "fedavg"
    Params = FedAvgParams

    def client_update(self, model, global_params, data, *, generator, device) -> ClientUpdate:
        local, loss = train_labeled(model, global_params, data, self.params, generator=generator, device=device)
        return ClientUpdate(
            client_id=data.client_id,
            deltas={"model": subtract(local, global_params)},
            weight=float(data.num_labeled),
            metrics={"num_labeled": data.num_labeled, "loss_labeled": loss},
        )
