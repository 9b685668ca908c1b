"""The supervised branch on bags: tau SGD steps from the global model, on whole bags
(fedlabel.algorithms.fedavg.train_labeled runs them for a bagged client).

- dllp: the proportion loss of each bag (:func:`fedlabel.llp.losses.proportion_loss`).
- bp: pseudo-labels from loopy BP (:mod:`fedlabel.llp.bp`) on the embeddings of the global model
  received this round, then cross-entropy on them (plus bp.bag_loss_weight x the proportion
  loss). Embedding refinement happens between rounds: the next round's global model, trained on
  these pseudo-labels, gives the new embeddings, kNN graph and BP run (the paper's alternation,
  one refinement per round).

A batch holds whole bags, max(1, round(batch_size / mean bag size)) of them, so a bag's mean
prediction is over all its members; bags are drawn epoch by epoch without replacement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedlabel.augment import weak_augment
from fedlabel.data.bags import Bags
from fedlabel.llp.bp import llp_mrf, loopy_bp
from fedlabel.llp.losses import proportion_loss
from fedlabel.training import ClientContext, LossFn, Params, to_float

if TYPE_CHECKING:
    from fedlabel.algorithms.base import AlgorithmParams


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)  # type: ignore[operator]  # the CNN's feature extractor


@torch.no_grad()
def embed(
    model: nn.Module,
    params: Params,
    images: torch.Tensor,
    *,
    device: torch.device,
    chunk: int = 256,
) -> torch.Tensor:
    """The model's penultimate embedding (``model.features``) of uint8 images under ``params``."""
    wrapped = _Features(model)
    named = {f"model.{k}": v for k, v in params.items()}
    outs = [
        functional_call(wrapped, named, (to_float(images[i : i + chunk].to(device)),))
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(outs) if outs else torch.zeros(0, 0, device=device)


def bag_batches(
    bags: Bags, ctx: ClientContext, *, batch_size: int, steps: int
) -> list[torch.Tensor]:
    """``steps`` batches of instance indices, each the union of whole bags (the bags are the
    records the context's trainer draws)."""
    sizes = bags.sizes
    per_batch = max(1, round(batch_size * bags.num_bags / max(int(sizes.sum()), 1)))
    order = torch.argsort(bags.bag_index, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    members = [order[s : s + n] for s, n in zip(starts.tolist(), sizes.tolist())]
    chosen = ctx.batches(bags.num_bags, batch_size=per_batch, steps=steps)
    return [torch.cat([members[b] for b in batch.tolist()]) for batch in chosen]


def bp_pseudo_labels(
    model: nn.Module, params: Params, bags: Bags, *, device: torch.device
) -> torch.Tensor:
    """Hard pseudo-labels (int64 N, on cpu) from BP marginals on the embeddings under ``params``."""
    emb = embed(model, params, bags.images, device=device).cpu()
    target_counts = bags.proportions().double() * bags.sizes[:, None].double()
    mrf = llp_mrf(emb, bags.bag_index, target_counts, params=bags.bp)
    return loopy_bp(mrf, iterations=bags.bp.iterations, damping=bags.bp.damping).argmax(dim=1)


def bag_objective(
    model: nn.Module,
    global_params: Params,
    bags: Bags,
    p: AlgorithmParams,
    ctx: ClientContext,
) -> tuple[list[torch.Tensor], LossFn]:
    """The supervised branch's (batches, loss_fn) for a bagged client, for ``ctx.train``:
    p.local_steps batches of whole bags and the DLLP or BP loss of a batch."""
    device = ctx.device
    x = bags.images.to(device)
    bag_of = bags.bag_index.to(device)
    proportions = bags.proportions().to(device)
    batches = bag_batches(bags, ctx, batch_size=p.batch_size, steps=p.local_steps)
    pseudo = None
    if bags.method == "bp" and batches:
        pseudo = bp_pseudo_labels(model, global_params, bags, device=device).to(device)

    def loss_fn(f, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(device)
        xb = to_float(x[idx])
        if p.weak_shift:
            xb = weak_augment(xb, generator=ctx.generator, max_shift=p.weak_shift)
        logits = f(xb)
        if pseudo is None:
            return proportion_loss(logits, bag_of[idx], proportions)
        loss = F.cross_entropy(logits, pseudo[idx])
        if bags.bp.bag_loss_weight:
            loss = loss + bags.bp.bag_loss_weight * proportion_loss(
                logits, bag_of[idx], proportions
            )
        return loss

    return batches, loss_fn
