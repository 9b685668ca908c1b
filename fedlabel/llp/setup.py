"""From the run configuration to the bags of :func:`fedlabel.data.build_federated`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedlabel.data import label_dp
from fedlabel.data.bags import BagSpec, BpParams

if TYPE_CHECKING:
    from fedlabel.config import Config


def bag_spec(cfg: Config) -> BagSpec | None:
    """The LLP bags of cfg.data, or None for instance labels."""
    d = cfg.data
    if not (d.bag_size or d.bag_key):
        return None
    bp = BpParams(
        neighbors=d.bp_neighbors,
        lambda_similarity=d.bp_lambda_similarity,
        lambda_bag=d.bp_lambda_bag,
        iterations=d.bp_iterations,
        damping=d.bp_damping,
        bag_loss_weight=d.bp_bag_loss_weight,
    )
    return BagSpec(
        size=d.bag_size,
        method=d.llp_method,
        mechanism=d.proportion_noise,
        epsilon=d.proportion_epsilon,
        delta=d.proportion_delta,
        bp=bp,
        secure_noise=cfg.privacy.secure_noise,
    )


def proportion_epsilon(cfg: Config) -> float | None:
    """The label-DP epsilon of the released bag counts (None: no bags, or exact counts)."""
    spec = bag_spec(cfg)
    if spec is None or spec.epsilon == 0:
        return None
    scale = label_dp.noise_scale(spec.mechanism, epsilon=spec.epsilon, delta=spec.delta)
    return label_dp.released_epsilon(spec.mechanism, scale=scale, delta=spec.delta)
