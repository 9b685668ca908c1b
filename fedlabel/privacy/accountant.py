"""Privacy accounting: a stateful ledger over Opacus's accountants (the math is Opacus's).

DP-SGD: clients are stateless, so each client reports the (noise_multiplier, sample_rate, steps)
of every private training loop it ran in a round and the server keeps each client's history;
a client's epsilon composes all its steps over all rounds it took part in. The history is a plain
dict (``state_dict``/``load_state_dict``) so it survives a checkpoint.

Central DP: one history for the whole population, one entry per round (the subsampled Gaussian
with rate clients_per_round / num_clients). Flower 1.42's own RdpAccountant needs the flwr[dp]
extra (dp-accounting) and its fixed-clipping wrappers account only without sampling
amplification and with equal FedAvg weights, so epsilon is computed here with Opacus's RDP (or
PRV) accountant for the Poisson-subsampled Gaussian, the usual approximation for the fixed-size
uniform cohorts this simulator samples.
"""

from __future__ import annotations

import functools

import numpy as np

History = list[tuple[float, float, int]]  # (noise_multiplier, sample_rate, steps)


def epsilon(history: History, *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of every entry of ``history`` (0 when empty):
    exactly what Opacus's accountant gives for that history. RDP is linear in the number of
    steps, so the RDP curve of one step is computed once per (noise, rate) (about 0.3 s each in
    Opacus's Python series) and scaled, which is what Opacus's ``compute_rdp`` does inside."""
    from opacus.accountants import RDPAccountant, create_accountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    if not history:
        return 0.0
    if accountant == "rdp":
        rdp = sum(_rdp_one_step(float(z), float(q)) * int(s) for z, q, s in history)
        eps, _ = rdp_analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
        )
        return float(eps)
    acc = create_accountant(accountant)
    acc.history = [(float(z), float(q), int(s)) for z, q, s in history]
    return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=4096)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    return np.asarray(rdp, dtype=float)


def merge(history: History, entries: History) -> History:
    """history + entries with equal (noise, rate) pairs combined (composition is commutative)."""
    steps: dict[tuple[float, float], int] = {}
    for z, q, s in [*history, *entries]:
        steps[(float(z), float(q))] = steps.get((float(z), float(q)), 0) + int(s)
    return [(z, q, s) for (z, q), s in steps.items()]


class PrivacyLedger:
    """Per-party privacy histories (party = client id for DP-SGD, "population" for central DP)
    and their epsilons at ``delta``."""

    def __init__(self, *, delta: float, accountant: str = "rdp") -> None:
        self.delta = delta
        self.accountant = accountant
        self.histories: dict[str, History] = {}
        self._epsilons: dict[str, float] = {}

    def record(self, party: str | int, entries: History) -> None:
        key = str(party)
        self.histories[key] = merge(self.histories.get(key, []), entries)
        self._epsilons[key] = epsilon(
            self.histories[key], delta=self.delta, accountant=self.accountant
        )

    def epsilons(self) -> dict[str, float]:
        return dict(self._epsilons)

    def max_epsilon(self) -> float | None:
        return max(self._epsilons.values()) if self._epsilons else None

    def state_dict(self) -> dict:
        return {
            "delta": self.delta,
            "accountant": self.accountant,
            "histories": {k: [list(e) for e in h] for k, h in self.histories.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["delta"] != self.delta or state["accountant"] != self.accountant:
            raise ValueError(
                f"privacy ledger was kept at delta={state['delta']} with {state['accountant']}, "
                f"not delta={self.delta} with {self.accountant}"
            )
        self.histories, self._epsilons = {}, {}
        for key, history in state["histories"].items():
            self.record(key, [tuple(e) for e in history])
