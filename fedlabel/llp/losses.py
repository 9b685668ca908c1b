"""The DLLP proportion loss (Ardehaly & Culotta, 2017), a pure tensor function."""

from __future__ import annotations

import torch


def proportion_loss(
    logits: torch.Tensor, bag_of: torch.Tensor, proportions: torch.Tensor
) -> torch.Tensor:
    """Mean over the bags present in the batch of
    -sum_c p_bc log( mean_{i in b} softmax(logits_i)_c ).

    logits: N x C; bag_of: int64 N, the bag of each row; proportions: B x C for all bags (rows
    of bags absent from the batch are ignored). The mean runs over the bag's members present in
    the batch, which is the whole bag when batches are built from whole bags."""
    bags, local = torch.unique(bag_of, return_inverse=True)
    probs = logits.softmax(dim=1)
    sums = probs.new_zeros(len(bags), probs.shape[1]).index_add(0, local, probs)
    sizes = torch.bincount(local, minlength=len(bags)).to(probs.dtype)
    mean = sums / sizes[:, None]
    target = proportions[bags].to(probs.dtype)
    return -(target * mean.clamp_min(1e-12).log()).sum(dim=1).mean()
