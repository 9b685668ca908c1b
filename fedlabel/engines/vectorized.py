"""The vectorized engine: the clients of a cohort trained as one batched computation.

The engine knows no algorithm: it looks up the batched version an algorithm registers beside
itself (``fedlabel.algorithms.batching``: how batching works, and how exact it is) and trains
chunks of the cohort with it, each client with the generator the sequential engine would give
it. An algorithm without one, a private run (DP-SGD needs per-sample clipping; central DP the
clipping at the transport) and label proportions (bags) train their clients one after another
with the in-process engine's code, and the run says so.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedlabel.algorithms import Algorithm, ClientUpdate
from fedlabel.algorithms.batching import BatchedUpdate, batched_version
from fedlabel.config import Config
from fedlabel.data import FederatedData
from fedlabel.engines.inprocess import run_inprocess, sequential_trainer
from fedlabel.federation import TrainCohort, client_generator
from fedlabel.training import Params


def run_vectorized(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole simulation in this process with batched cohorts; returns the summary."""
    return run_inprocess(cfg, progress=progress, trainer=vectorized_trainer)


def _why_sequential(cfg: Config, algorithm: Algorithm, fed: FederatedData) -> str | None:
    name = f"algorithm {algorithm.params.name!r}"
    if batched_version(algorithm) is None:
        return f"{name} has no batched client update"
    if cfg.privacy.name != "none":
        return f"{name} with privacy={cfg.privacy.name} has no batched client update"
    if any(c.bags is not None for c in fed.clients):
        return (
            f"{name} on label proportions (data.bag_size / data.bag_key) has no batched client"
            " update"
        )
    return None


def vectorized_trainer(
    cfg: Config, model: nn.Module, algorithm: Algorithm, fed: FederatedData, device: torch.device
) -> TrainCohort:
    why = _why_sequential(cfg, algorithm, fed)
    if why:
        print(
            f"engine=vectorized: {why}; its clients train one after another as with"
            " engine=inprocess",
            file=sys.stderr,
        )
        return sequential_trainer(cfg, model, algorithm, fed, device)
    if device.type == "cuda":
        # vmap turns the cohort's convolutions into grouped convolutions (one group per client),
        # for which cuDNN's default algorithm choice can be far from the fastest; the shapes
        # repeat every step, so autotuning them once pays off
        torch.backends.cudnn.benchmark = True
    trainer = batched_trainer(model, algorithm, fed, device)
    chunks = Chunks(model, trainer, device, chunk_clients=cfg.engine.chunk_clients)

    def train_cohort(
        rnd: int, cohort: list[int], global_params: Params, extras: dict
    ) -> list[ClientUpdate]:
        size = chunks.size(len(cohort))
        updates: list[ClientUpdate] = []
        for start in range(0, len(cohort), size):
            ids = cohort[start : start + size]
            gens = [client_generator(seed=cfg.seed, round=rnd, client_id=cid) for cid in ids]
            updates += trainer.train([fed.clients[cid] for cid in ids], global_params, gens)
        return updates

    return train_cohort


def batched_trainer(
    model: nn.Module, algorithm: Algorithm, fed: FederatedData, device: torch.device
) -> BatchedUpdate:
    """The algorithm's batched update over all of ``fed``'s clients (ValueError if it has none)."""
    cls = batched_version(algorithm)
    if cls is None:
        raise ValueError(f"algorithm {algorithm.params.name!r} has no batched client update")
    return cls(model, algorithm, fed.clients, device)


class Chunks:
    """How many clients train together: engine.chunk_clients, or as many as fit in half the free
    device memory."""

    def __init__(
        self, model: nn.Module, trainer: BatchedUpdate, device: torch.device, *, chunk_clients: int
    ) -> None:
        self.model, self.trainer, self.device, self.chunk_clients = (
            model,
            trainer,
            device,
            chunk_clients,
        )
        self._per_client_bytes: int | None = None

    def size(self, cohort: int) -> int:
        if self.chunk_clients:
            return min(self.chunk_clients, cohort)
        if self._per_client_bytes is None:
            self._per_client_bytes = self._estimate_bytes_per_client()
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(1, min(cohort, int(0.5 * free) // self._per_client_bytes))

    def _estimate_bytes_per_client(self) -> int:
        """Parameters, gradients, velocity and deltas (8 copies) plus three times the tensors
        one training batch saves for backward (strong and clean views, vmap's copies)."""
        saved = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        params = {
            k: v.detach().to(self.device).requires_grad_() for k, v in self.model.named_parameters()
        }
        x = torch.zeros(self.trainer.p.batch_size, *self.trainer.sample_shape, device=self.device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(self.model, params, (x,)).sum()
        param_bytes = sum(v.numel() * v.element_size() for v in params.values())
        return 8 * param_bytes + 3 * saved


__all__ = ["Chunks", "batched_trainer", "run_vectorized", "vectorized_trainer"]
