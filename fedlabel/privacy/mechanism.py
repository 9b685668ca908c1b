"""The privacy wrapper both engines put around a client update and around aggregation.

``private_client_update`` runs an algorithm's client update under the configured mechanism and
``ServerPrivacy`` aggregates and accounts on the server; algorithms know nothing of either."""

from __future__ import annotations

import torch
from torch import nn

from fedlabel import keys
from fedlabel.algorithms import Algorithm, ClientUpdate
from fedlabel.config import Config, PrivacyConfig
from fedlabel.data import ClientData
from fedlabel.privacy import central
from fedlabel.privacy import noise as noise_source
from fedlabel.privacy.accountant import PrivacyLedger
from fedlabel.privacy.dpsgd import DpSgd, DpSgdSettings
from fedlabel.robust import Combine, weighted_mean
from fedlabel.training import ClientContext

Params = dict[str, torch.Tensor]


def private_client_update(
    algorithm: Algorithm,
    privacy: PrivacyConfig,
    model: nn.Module,
    global_params: Params,
    data: ClientData,
    *,
    generator: torch.Generator,
    device: torch.device,
    clip: bool = True,
    extras: dict | None = None,
) -> ClientUpdate:
    """``algorithm.client_update`` under ``privacy``: its context's trainer is DP-SGD (and the
    ledger of what ran goes into the metrics), or client-side clipping for central DP
    (``clip=False``
    where the transport clips instead: Flower's fixedclipping_mod on the Flower engine).
    ``extras``: the algorithm's per-client payload, passed through."""
    kwargs = {"extras": extras} if extras else {}
    if privacy.name == "dpsgd":
        if privacy.secure_noise:  # noise and Poisson batches the server cannot regenerate
            noise = sampler = noise_source.os_entropy_generator()
        else:  # both from the client's seeded generator (simulation: reproducible)
            noise = torch.Generator().manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=generator))
            )
            sampler = None
        settings = DpSgdSettings(
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            grad_sample_mode=privacy.grad_sample_mode,
        )
        trainer = DpSgd(settings, noise, sampler)
        update = algorithm.client_update(
            model, global_params, data, ClientContext(device, generator, trainer), **kwargs
        )
        if trainer.ledger:
            update.metrics[keys.DP_NOISE_MULTIPLIERS] = [z for z, _, _ in trainer.ledger]
            update.metrics[keys.DP_SAMPLE_RATES] = [q for _, q, _ in trainer.ledger]
            update.metrics[keys.DP_STEPS] = [s for _, _, s in trainer.ledger]
        return update
    update = algorithm.client_update(
        model, global_params, data, ClientContext(device, generator), **kwargs
    )
    if privacy.name == "central_dp" and privacy.clipping == "client":
        delta = _single_delta(update)
        update.deltas = {
            "model": central.clip_update(delta, privacy.max_grad_norm) if clip else delta
        }
    return update


def _single_delta(update: ClientUpdate) -> Params:
    if set(update.deltas) != {"model"}:
        raise ValueError(
            f"privacy=central_dp needs one 'model' update per client; client {update.client_id} "
            f"sent {sorted(update.deltas)}"
        )
    return update.deltas["model"]


class ServerPrivacy:
    """Server side: DP aggregation (central DP) and the privacy ledger (both mechanisms).
    ``state_dict``/``load_state_dict`` carry the ledger through a checkpoint."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        p = cfg.privacy
        self.ledger = (
            PrivacyLedger(delta=p.delta, accountant=p.accountant) if p.name != "none" else None
        )

    def aggregate(
        self,
        algorithm: Algorithm,
        global_params: Params,
        updates: list[ClientUpdate],
        *,
        round: int,
        combine: Combine = weighted_mean,
    ) -> Params:
        """The algorithm's aggregation with ``combine`` (fedlabel.robust), or the private mean of
        central DP (config validation refuses a robust rule there)."""
        p = self.cfg.privacy
        if p.name != "central_dp":
            return algorithm.aggregate(global_params, updates, combine=combine)
        return central.private_aggregate(
            global_params,
            [(u.client_id, _single_delta(u)) for u in updates],
            clipping_norm=p.max_grad_norm,
            noise_multiplier=p.noise_multiplier,
            num_sampled_clients=self.cfg.clients_per_round,
            clip=p.clipping == "server",
            generator=(
                noise_source.os_entropy_generator()
                if p.secure_noise
                else central.noise_generator(seed=self.cfg.seed, round=round)
            ),
        )

    def account(self, updates: list[ClientUpdate]) -> float | None:
        """Compose this round's releases; returns the epsilon to report (max over clients so far
        for DP-SGD, the population's for central DP; None without DP)."""
        if self.ledger is None:
            return None
        p = self.cfg.privacy
        if p.name == "central_dp":
            rate = self.cfg.clients_per_round / self.cfg.data.num_clients
            self.ledger.record("population", [(p.noise_multiplier, rate, 1)])
        else:
            for u in updates:
                m = u.metrics
                if keys.DP_STEPS in m:
                    entries = list(
                        zip(m[keys.DP_NOISE_MULTIPLIERS], m[keys.DP_SAMPLE_RATES], m[keys.DP_STEPS])
                    )
                    self.ledger.record(u.client_id, entries)
        return self.ledger.max_epsilon() or 0.0  # 0 while no client has trained yet

    def summary(self) -> dict | None:
        """What summary.json records under "privacy" (None: no DP noise anywhere in the run)."""
        p = self.cfg.privacy
        if self.ledger is None:
            bag_noise = self.cfg.data.proportion_epsilon > 0
            return (
                {"mechanism": p.name, "noise_source": noise_source.noise_source(p)}
                if bag_noise
                else None
            )
        out = {
            "mechanism": p.name,
            "delta": p.delta,
            "accountant": p.accountant,
            "noise_multiplier": p.noise_multiplier,
            "max_grad_norm": p.max_grad_norm,
            "epsilon": self.ledger.max_epsilon(),
            "noise_source": noise_source.noise_source(p),
        }
        if p.name == "dpsgd":
            out["client_epsilon"] = dict(
                sorted(self.ledger.epsilons().items(), key=lambda kv: int(kv[0]))
            )
        else:
            out["clipping"] = p.clipping
        return out

    def state_dict(self) -> dict:
        return self.ledger.state_dict() if self.ledger is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.ledger is not None and state:
            self.ledger.load_state_dict(state)
