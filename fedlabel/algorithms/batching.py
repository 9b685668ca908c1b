"""Batched (vmap) client updates: the clients of a chunk trained as one computation.

An algorithm whose client update is a fixed number of SGD steps on a per-sample loss (a pure
function of the parameters, the batch and per-row tensors fixed before training) can register a
batched version beside itself with ``@batches(TheAlgorithm)``; ``engine=vectorized`` looks it
up with :func:`batched_version` and otherwise trains clients one after another.

A chunk keeps its parameters stacked (``C x ...``); one SGD step of all clients is one call of
``vmap(grad(loss))`` over ``functional_call``. Clients differ in size, so each step's batches
are padded to the widest and masked: a client's loss is the sum over its own rows divided by its
own batch size, which is the sequential mean. A client with fewer steps is frozen at the steps it
does not take.

Randomness equals the sequential update's: every client's generator draws its batches and
augmentation choices in the order the sequential code draws them, and the drawn choices are then
applied to the whole chunk at once. Results equal the sequential update up to float rounding
(batched convolutions add in another order), not bitwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Generic, cast

import torch
from torch import Tensor, nn

from fedlabel.algorithms.base import Algorithm, ClientUpdate, P
from fedlabel.data import ClientData
from fedlabel.training import Params, SgdConfig

Stacked = dict[str, Tensor]  # parameter name -> C x (parameter shape)

# what a batched version reproduces: a subclass that overrides none of these (it changes only
# parameters) shares its parent's batched version
PROTOCOL = (
    "client_update",
    "init_global",
    "client_payload",
    "eval_params",
    "aggregate",
    "delta_names",
)


class ClientImages:
    """One kind of images (labeled or unlabeled) of every client in one device tensor."""

    def __init__(
        self, images: list[Tensor], labels: list[Tensor | None], device: torch.device
    ) -> None:
        sizes = [len(x) for x in images]
        self.offsets = list(itertools.accumulate([0, *sizes[:-1]]))
        self.images = torch.cat(images).to(device)
        self.labels = (
            None
            if any(y is None for y in labels)
            else torch.cat(cast(list[Tensor], labels)).to(device)
        )

    def starts(self, clients: list[ClientData]) -> Tensor:
        """Row of each client's first image."""
        return torch.tensor(self.offsets)[[d.client_id for d in clients]]


class BatchedUpdate(Generic[P]):
    """Base of a batched client update. ``train`` returns one ClientUpdate per client, equal to
    the algorithm's ``client_update`` with that client's generator (up to float rounding).
    ``P``: the algorithm's Params type (of ``self.p``)."""

    algorithm_class: type[Algorithm]  # set by @batches

    def __init__(
        self,
        model: nn.Module,
        algorithm: Algorithm[P],
        clients: list[ClientData],
        device: torch.device,
    ) -> None:
        self.model, self.algorithm, self.device = model, algorithm, device
        self.p: P = algorithm.params
        self.sample_shape = tuple(clients[0].labeled_images.shape[1:])

    def train(
        self, clients: list[ClientData], global_params: Params, gens: list[torch.Generator]
    ) -> list[ClientUpdate]:
        raise NotImplementedError


_REGISTRY: dict[type[Algorithm], type[BatchedUpdate]] = {}


def batches(
    algorithm_class: type[Algorithm],
) -> Callable[[type[BatchedUpdate]], type[BatchedUpdate]]:
    """Class decorator: register the decorated BatchedUpdate as ``algorithm_class``'s."""

    def register(cls: type[BatchedUpdate]) -> type[BatchedUpdate]:
        cls.algorithm_class = algorithm_class
        _REGISTRY[algorithm_class] = cls
        return cls

    return register


def batched_version(algorithm: Algorithm) -> type[BatchedUpdate] | None:
    """The registered batched update of the algorithm's class or of the nearest parent whose
    protocol (:data:`PROTOCOL`) it keeps; None where there is none."""
    kind = type(algorithm)
    for parent in kind.__mro__:
        if parent in _REGISTRY:
            same = all(getattr(kind, m) is getattr(parent, m) for m in PROTOCOL)
            return _REGISTRY[parent] if same else None
    return None


def padded(batches: list[list[Tensor]], steps: int) -> tuple[Tensor, Tensor, int]:
    """Per-client lists of index batches -> (C x steps x width indices, bool mask, width)."""
    width = max((len(b) for bs in batches for b in bs), default=1)
    index = torch.zeros(len(batches), steps, width, dtype=torch.long)
    mask = torch.zeros(len(batches), steps, width, dtype=torch.bool)
    for c, bs in enumerate(batches):
        for t, b in enumerate(bs):
            index[c, t, : len(b)] = b
            mask[c, t, : len(b)] = True
    return index, mask, width


def stack(global_params: Params, c: int, sgd: SgdConfig) -> tuple[Stacked, Stacked | None]:
    """``c`` copies of the global parameters, and zero velocity where SGD has momentum."""
    params = {
        k: v.detach().unsqueeze(0).repeat(c, *[1] * v.dim()) for k, v in global_params.items()
    }
    velocity = {k: torch.zeros_like(v) for k, v in params.items()} if sgd.momentum else None
    return params, velocity


def sgd_step(
    params: Stacked, velocity: Stacked | None, grads: Stacked, active: Tensor, sgd: SgdConfig
) -> None:
    """One SGD step of every active client, in the arithmetic of ``training.sgd_step``."""
    for k, g in grads.items():
        on = active.view(-1, *[1] * (g.dim() - 1))
        if sgd.weight_decay:
            g = g.add(params[k], alpha=sgd.weight_decay)
        if velocity is not None:
            velocity[k] = torch.where(on, velocity[k].mul(sgd.momentum).add(g), velocity[k])
            g = velocity[k]
        params[k] = torch.where(on, params[k].sub(g, alpha=sgd.lr), params[k])


def minus(stacked: Stacked, global_params: Params) -> Stacked:
    """Every client's delta, one subtraction per parameter (clients' deltas are views of it)."""
    return {k: v - global_params[k] for k, v in stacked.items()}


def row(stacked: Stacked, i: int) -> Params:
    """Client ``i``'s parameters (or delta) out of a stacked dict."""
    return {k: v[i] for k, v in stacked.items()}
