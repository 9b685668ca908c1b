"""Client-level central DP with fixed clipping (DP-FedAvg, McMahan et al., ICLR 2018; Flower's
DifferentialPrivacy{Server,Client}SideFixedClipping): each sampled client's update Delta_k is
clipped to L2 norm C over all its parameters, the server averages the clipped updates with equal
weights 1/n over the n sampled clients and adds N(0, sigma^2) to every coordinate, with
sigma = z C / n (Flower's ``compute_stdv``). The same functions run on both engines, so both
give the same models and the same epsilon; tests check them against Flower's own helpers.

Equal weights (not r_k) because a client's weighted share could reach 1 and its sensitivity C,
not C / n. The divisor is the number of *sampled* clients, as in Flower, so a client that fails
lowers the mean without changing the noise. The noise is drawn from a torch generator seeded by
(seed, round): Flower's ``add_gaussian_noise_inplace`` draws from numpy's unseeded global
generator, which would break run-to-run reproducibility; with privacy.secure_noise (and always in
a deployment) from one seeded by the OS's entropy instead (fedlabel.privacy.noise).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

Params = dict[str, torch.Tensor]


def update_norm(delta: Params) -> float:
    """L2 norm of an update over all its parameters (Flower's ``get_norm``)."""
    return float(
        torch.sqrt(cast(torch.Tensor, sum((v.double() ** 2).sum() for v in delta.values())))
    )


def clip_update(delta: Params, clipping_norm: float) -> Params:
    """Delta * min(1, C / ||Delta||) (Flower's ``clip_inputs_inplace``, FlatClip of
    McMahan et al. 2018)."""
    norm = update_norm(delta)
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in delta.items()}


def noise_std(noise_multiplier: float, clipping_norm: float, num_sampled_clients: int) -> float:
    """sigma = z C / n (Flower's ``compute_stdv``)."""
    return noise_multiplier * clipping_norm / num_sampled_clients


def noise_generator(*, seed: int, round: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, 3, round]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def private_aggregate(
    global_params: Params,
    deltas: list[tuple[int, Params]],
    *,
    clipping_norm: float,
    noise_multiplier: float,
    num_sampled_clients: int,
    clip: bool,
    generator: torch.Generator,
) -> Params:
    """w + (1/n) sum_k clip(Delta_k) + N(0, (z C / n)^2), summed in client-id order.
    ``clip=False`` when clients clipped already (client-side clipping); then each update's norm
    is checked against C instead."""
    step = {k: torch.zeros_like(v) for k, v in global_params.items()}
    for client_id, delta in sorted(deltas, key=lambda d: d[0]):
        if clip:
            delta = clip_update(delta, clipping_norm)
        elif update_norm(delta) > clipping_norm * (1 + 1e-3):
            raise ValueError(
                f"client {client_id} sent an update of norm {update_norm(delta):.6g} > clipping"
                f" norm {clipping_norm}"
            )
        for k in step:
            step[k].add_(delta[k].to(step[k].device), alpha=1.0 / num_sampled_clients)
    std = noise_std(noise_multiplier, clipping_norm, num_sampled_clients)
    return {
        k: (
            global_params[k]
            + step[k]
            + torch.normal(0.0, std, v.shape, generator=generator).to(v.device)
        )
        for k, v in global_params.items()
    }
