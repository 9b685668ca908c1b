"""Injected client faults for simulation, drawn from (seed, round, client id), and a simulated
dishonest site.

The draw is a pure function, so the in-process engine and every Flower ClientApp agree on which
client fails how in which round. The engines make the faults happen (in-process: the client's
result is replaced by its failure; Flower: the ClientApp really raises or sleeps past the
server's deadline); the server sees only what arrives and records why the others did not.
The dishonest site (faults.attack, :func:`tamper`, :func:`claimed_size`) is simulated by the
in-process engines only: it sends its honest update altered in the way the server must survive."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fedlabel.algorithms import ClientUpdate
from fedlabel.config import FaultsConfig
from fedlabel.robust import update_norm

CRASH = "crash"  # the client raises during training: an error reply
DROPOUT = "dropout"  # the client never replies
STRAGGLER = "straggler"  # the client replies after the round deadline

# Why a sampled client contributed no update, as the server sees it (summary.json "failed").
CRASHED = "crashed"  # an error reply
TIMEOUT = "timeout"  # no reply before faults.round_deadline_s

# A client that must miss the deadline sleeps this long past it, so its reply (if any) lands
# after the server's last poll; Flower's server polls for replies every 3 s.
LATE_BY_S = 2.0


class InjectedCrash(RuntimeError):
    """Raised by a client that faults.crash_prob made crash."""


@dataclass(frozen=True)
class ClientFailure:
    """A sampled client whose update did not arrive, and why (CRASHED or TIMEOUT)."""

    client_id: int
    reason: str
    detail: str = ""

    def record(self) -> dict:
        return {"client": self.client_id, "reason": self.reason, "detail": self.detail}


def draw_fault(faults: FaultsConfig, *, seed: int, round: int, client_id: int) -> str | None:
    """CRASH, DROPOUT, STRAGGLER or None for this client in this round (one uniform draw)."""
    if faults.crash_prob + faults.dropout_prob + faults.straggler_prob == 0:
        return None
    u = np.random.default_rng(np.random.SeedSequence([seed, 3, round, client_id])).random()
    for kind, prob in (
        (CRASH, faults.crash_prob),
        (DROPOUT, faults.dropout_prob),
        (STRAGGLER, faults.straggler_prob),
    ):
        if u < prob:
            return kind
        u -= prob
    return None


def seen_by_server(kind: str, client_id: int) -> ClientFailure:
    """What the server records for an injected fault: a crash is an error reply, a dropout or a
    straggler is no reply before the deadline."""
    if kind == CRASH:
        return ClientFailure(client_id, CRASHED, "injected crash")
    return ClientFailure(client_id, TIMEOUT, f"injected {kind}")


# faults.attack: what the dishonest site faults.attack_client does to its honest update
SCALE = "scale"  # deltas x attack_scale (x100: under max_update_norm, the model is wrecked)
NORM = "norm"  # deltas rescaled to attack_scale x max_update_norm (0.99: just inside the bound)
WEIGHT = "weight"  # r_k = attack_scale, and the same size claimed when the server discovers it
COUNTERS = "counters"  # finite but absurd counters: num_kept = 1e9, loss_labeled = -1e30


def tamper(faults: FaultsConfig, update: ClientUpdate) -> ClientUpdate:
    """The update as the dishonest site sends it (the update itself for every other client)."""
    if faults.attack == "none" or update.client_id != faults.attack_client:
        return update
    if faults.attack in (SCALE, NORM):
        norm = update_norm(update.deltas)
        scale = (
            faults.attack_scale
            if faults.attack == SCALE
            else faults.attack_scale * faults.max_update_norm / norm
        )
        deltas = {
            name: {k: v * scale for k, v in delta.items()} for name, delta in update.deltas.items()
        }
        return dataclasses.replace(update, deltas=deltas)
    if faults.attack == WEIGHT:
        return dataclasses.replace(update, weight=faults.attack_scale)
    if faults.attack == COUNTERS:
        return dataclasses.replace(
            update, metrics={**update.metrics, "num_kept": 1e9, "loss_labeled": -1e30}
        )
    raise ValueError(f"unknown faults.attack {faults.attack!r}")


def claimed_size(faults: FaultsConfig, client_id: int, size: int) -> int:
    """The size the server is told for a client at discovery (the dishonest site may lie)."""
    if faults.attack == WEIGHT and client_id == faults.attack_client:
        return int(faults.attack_scale)
    return size
