"""Server-side checks of client updates before aggregation (pure functions, every runtime).

An update is rejected, never repaired: the server logs the client id and the reason and
aggregates only the updates that passed, so a bad update never touches the global model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedlabel.algorithms import ClientUpdate
from fedlabel.training import Params

# Rejection reasons, as they appear in summary.json.
KEYS = "keys"  # wrong delta names or parameter names
SHAPE = "shape"
DTYPE = "dtype"
NON_FINITE = "non_finite"  # NaN or Inf in a delta or a metric
NORM = "norm"  # L2 norm of the update above faults.max_update_norm
WEIGHT = "weight"  # r_k negative, NaN/Inf, or more than the client's sample count
CLIENT = "client"  # a client id that was not asked this round, or asked twice
UNDECODABLE = "undecodable"  # a reply the transport could not turn into an update


@dataclass(frozen=True)
class Rejection:
    client_id: int
    reason: str
    detail: str

    def record(self) -> dict:
        return {"client": self.client_id, "reason": self.reason, "detail": self.detail}


def check_update(
    update: ClientUpdate,
    global_params: Params,
    *,
    delta_names: frozenset[str],
    max_update_norm: float = 0.0,
    max_weight: float = math.inf,
) -> Rejection | None:
    """None if ``update`` may be aggregated, else the first reason it may not.

    Every named delta must have exactly the global parameters' names, shapes and dtypes and
    finite values; the L2 norm over all deltas must be at most ``max_update_norm`` (0 = no
    bound); the weight r_k must be finite and in [0, max_weight]; metrics must be finite numbers
    (or lists of them)."""

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(update.client_id, reason, detail)

    if not isinstance(update.deltas, dict) or set(update.deltas) != delta_names:
        got = sorted(update.deltas) if isinstance(update.deltas, dict) else type(update.deltas).__name__
        return reject(KEYS, f"deltas {got}, expected {sorted(delta_names)}")
    squares = 0.0
    for name, delta in update.deltas.items():
        if not isinstance(delta, dict) or set(delta) != set(global_params):
            missing = sorted(set(global_params) - set(delta)) if isinstance(delta, dict) else []
            extra = sorted(set(delta) - set(global_params)) if isinstance(delta, dict) else []
            return reject(KEYS, f"delta {name!r}: missing {missing[:3]}, unexpected {extra[:3]}")
        for key, ref in global_params.items():
            value = delta[key]
            if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                return reject(SHAPE, f"delta {name!r}, {key}: shape {shape}, expected {tuple(ref.shape)}")
            if value.dtype != ref.dtype:
                return reject(DTYPE, f"delta {name!r}, {key}: dtype {value.dtype}, expected {ref.dtype}")
            if not bool(torch.isfinite(value).all()):
                return reject(NON_FINITE, f"delta {name!r}, {key} holds NaN or Inf")
            squares += float(torch.linalg.vector_norm(value.double())) ** 2
    norm = math.sqrt(squares)
    if max_update_norm > 0 and norm > max_update_norm:
        return reject(NORM, f"update norm {norm:.4g} > faults.max_update_norm={max_update_norm:g}")
    weight = update.weight
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or not 0 <= weight <= max_weight:
        return reject(WEIGHT, f"weight r_k={weight!r} is not in [0, {max_weight:g}]")
    for key, value in update.metrics.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return reject(NON_FINITE, f"metric {key}={value!r} is not a finite number (or list of them)")
    return None


def screen_updates(
    updates: list[ClientUpdate],
    global_params: Params,
    *,
    cohort: list[int],
    delta_names: frozenset[str],
    max_update_norm: float = 0.0,
    client_sizes: dict[int, int] | None = None,
) -> tuple[list[ClientUpdate], list[Rejection]]:
    """Split a round's updates into (accepted, rejected). ``client_sizes`` (samples per client,
    when known) bounds each weight r_k, which counts samples in every algorithm here."""
    accepted: list[ClientUpdate] = []
    rejected: list[Rejection] = []
    seen: set[int] = set()
    for update in updates:
        cid = update.client_id
        if cid not in cohort or cid in seen:
            rejected.append(Rejection(cid, CLIENT, f"client {cid} {'replied twice' if cid in seen else 'was not sampled'}"))
            continue
        seen.add(cid)
        max_weight = math.inf if client_sizes is None or cid not in client_sizes else float(client_sizes[cid])
        problem = check_update(update, global_params, delta_names=delta_names, max_update_norm=max_update_norm, max_weight=max_weight)
        if problem is None:
            accepted.append(update)
        else:
            rejected.append(problem)
    return accepted, rejected
