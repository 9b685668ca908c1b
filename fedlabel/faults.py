"""Injected client faults for simulation, drawn from (seed, round, client id).

The draw is a pure function, so the in-process engine and every Flower ClientApp agree on which
client fails how in which round. The engines make the faults happen (in-process: the client's
result is replaced by its failure; Flower: the ClientApp really raises or sleeps past the
server's deadline); the server sees only what arrives and records why the others did not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlabel.config import FaultsConfig

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
    for kind, prob in ((CRASH, faults.crash_prob), (DROPOUT, faults.dropout_prob), (STRAGGLER, faults.straggler_prob)):
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
