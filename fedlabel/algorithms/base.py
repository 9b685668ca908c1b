"""The protocol every algorithm implements: a frozen params dataclass, a client update and a
server aggregation. Both engines (in-process and Flower) call exactly these functions.

Optional server-side hooks (defaults keep FedAvg-style algorithms unchanged):
 - ``init_global``: the initial global state; may hold more than the model (FedMatch's sigma and
   psi, FedTriNet's extra heads). ``eval_params`` turns it into the model's parameters, which
   the central evaluation runs and model.pt stores.
 - ``client_payload``: extra named arrays per client sent with its train message (FedMatch's
   helper models); a Flower client receives them inside the message, as ArrayRecords.
 - ``state_dict`` / ``load_state_dict``: server-side algorithm state kept across rounds.
 - ``pool_metrics`` / ``round_fields``: the round's metrics pooled from the clients' counters, and
   which of them go into rounds.csv beside the shared ones.
 - ``check``: refuse run settings (privacy, aggregation) the algorithm cannot honour.
 - ``client_work``: the samples a client's update processes (to balance engine.workers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from fedlabel.data import ClientData
from fedlabel.errors import check
from fedlabel.robust import Combine, weighted_mean
from fedlabel.training import ClientContext, Params, SgdConfig

if TYPE_CHECKING:
    from fedlabel.config import Config

StateDict = dict[str, torch.Tensor]
# training.Params (the model's parameters) for annotations inside Algorithm classes, where the
# class attribute ``Params`` (the hyperparameter dataclass) shadows the name
ModelParams = Params


@dataclass(frozen=True)
class AlgorithmParams:
    """Hyperparameters shared by every algorithm (the supervised branch)."""

    name: str = ""
    lr: float = 0.05  # client SGD learning rate
    momentum: float = 0.0  # client SGD momentum (reset every round; clients are stateless)
    weight_decay: float = 0.0
    batch_size: int = 32
    local_steps: int = 10  # tau: SGD steps on labeled batches per round
    weak_shift: int = 2  # weak view on labeled batches: random shift of up to N pixels (0 = off)

    def sgd(self) -> SgdConfig:
        return SgdConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def validate(self) -> None:
        check(self.lr > 0, "algorithm.lr", f"must be > 0, got {self.lr}")
        check(
            0 <= self.momentum < 1, "algorithm.momentum", f"must be in [0, 1), got {self.momentum}"
        )
        check(
            self.weight_decay >= 0,
            "algorithm.weight_decay",
            f"must be >= 0, got {self.weight_decay}",
        )
        check(self.batch_size >= 1, "algorithm.batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            self.local_steps >= 0, "algorithm.local_steps", f"must be >= 0, got {self.local_steps}"
        )
        check(self.weak_shift >= 0, "algorithm.weak_shift", f"must be >= 0, got {self.weak_shift}")


@dataclass(frozen=True)
class ServerSetup:
    """What the server knows when it builds the initial global state."""

    model: nn.Module  # the model skeleton (for algorithms that run the model on the server)
    seed: int  # the run's seed, for any extra initial state
    input_shape: tuple[int, ...]  # one image: C x H x W


@dataclass
class ClientUpdate:
    """What a client sends back: named parameter deltas, its aggregation weight r_k, and
    counters (sums, not ratios, so the server can pool them exactly across clients)."""

    client_id: int
    deltas: dict[str, StateDict]
    weight: float
    metrics: dict[str, float] = field(default_factory=dict)


def total(updates: list[ClientUpdate], key: str) -> float:
    """The sum of counter ``key`` over the updates (0 where a client did not send it)."""
    return float(sum(u.metrics.get(key, 0) for u in updates))


def knows_truth(updates: list[ClientUpdate]) -> bool:
    """Every client counted its correct pseudo-labels (simulation: it knows the true labels)."""
    return all("num_kept_correct" in u.metrics for u in updates) and any(
        "num_kept" in u.metrics for u in updates
    )


def mean(updates: list[ClientUpdate], key: str) -> float | None:
    """The mean of ``key`` over the clients that sent it (None: none did)."""
    vals = [u.metrics[key] for u in updates if key in u.metrics]
    return float(np.mean(vals)) if vals else None


P = TypeVar("P", bound=AlgorithmParams)


class Algorithm(Generic[P]):
    """Base class. Subclasses set ``Params`` and override what differs; fedlabel.algorithms
    registers them under their names (ALGORITHMS). ``P``: the type of ``self.params`` (a
    subclass is ``Algorithm[ItsParams]``)."""

    # True when the supervised branch runs through fedavg.train_labeled, which also trains on
    # LLP bags (data.bag_size / data.bag_key); config validation refuses bags otherwise.
    trains_on_bags: ClassVar[bool] = False
    Params: ClassVar[type[AlgorithmParams]] = AlgorithmParams
    # privacy=dpsgd: every SGD step trains on one Poisson batch of one record set through the
    # context's batches/train (fedlabel.privacy.dpsgd's contract); joint labeled+unlabeled steps
    # and hand-written SGD loops are not covered.
    dpsgd_supported: ClassVar[bool] = False
    # privacy=central_dp replaces ``aggregate`` by the private mean; non-empty: what the
    # algorithm's own aggregation does that would then silently not happen (config refuses it).
    central_dp_conflict: ClassVar[str] = ""
    # True when the "num_unlabeled" counter counts samples processed over the local steps (at most
    # local_steps x the set size) rather than the client's unlabeled set (at most its size).
    counts_unlabeled_per_step: ClassVar[bool] = False
    # The pooled metrics of this algorithm's own that rounds.csv (and TensorBoard) get as columns.
    round_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: P) -> None:
        self.params: P = params

    def client_update(
        self,
        model: nn.Module,
        global_params: ModelParams,
        data: ClientData,
        ctx: ClientContext,
        *,
        extras: dict[str, StateDict] | None = None,
    ) -> ClientUpdate:
        """One client's round. ``ctx``: its device, generator and trainer (draw batches and
        train only through it, so DP-SGD applies). ``extras``: what ``client_payload`` gave this
        client (the engines pass it only when that is not empty)."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Raise ConfigError (fedlabel.errors.check) if the run's settings outside
        ``algorithm.*`` ask for something this algorithm cannot do; called by config validation."""

    def client_work(self, data: ClientData) -> float:
        """Samples one client update processes: its labeled SGD batches (data size alone is a
        poor measure: every client with at least a batch does the same steps)."""
        p = self.params
        return float(min(p.batch_size, data.num_labeled) * p.local_steps)

    def pool_metrics(self, updates: list[ClientUpdate]) -> dict[str, float | None]:
        """The round's metrics pooled over the accepted updates from their counters (exact, not
        a mean of ratios): pseudo-label coverage (num_kept / num_unlabeled) and accuracy
        (num_kept_correct / num_kept, when every client knows the truth), the mean losses.
        Subclasses add their own (and name the ones for rounds.csv in ``round_fields``)."""
        n_u, kept = total(updates, "num_unlabeled"), total(updates, "num_kept")
        has_truth = knows_truth(updates)
        return {
            "clients": len(updates),
            "pseudo_label_coverage": kept / n_u if n_u else None,
            "pseudo_label_accuracy": (
                total(updates, "num_kept_correct") / kept if kept and has_truth else None
            ),
            "loss_labeled": mean(updates, "loss_labeled"),
            "loss_unlabeled": mean(updates, "loss_unlabeled"),
        }

    def delta_names(self) -> frozenset[str]:
        """The names of the deltas every client update must carry (checked before aggregation)."""
        return frozenset({"model"})

    def init_global(self, params: ModelParams, *, setup: ServerSetup) -> ModelParams:
        """The initial global state from the seeded initial model parameters."""
        return params

    def eval_params(self, global_params: ModelParams) -> ModelParams:
        """The model parameters the central evaluation runs (and model.pt stores)."""
        return global_params

    def client_payload(
        self, rnd: int, cohort: list[int], global_params: ModelParams
    ) -> dict[int, dict[str, StateDict]]:
        """Extra named arrays per client id, sent with the train message of round ``rnd``."""
        return {}

    def state_dict(self) -> dict:
        """Server-side algorithm state kept across rounds (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def aggregate(
        self,
        global_params: ModelParams,
        updates: list[ClientUpdate],
        *,
        combine: Combine = weighted_mean,
    ) -> ModelParams:
        """w + combine(Delta_k, r_k) over the updates with r_k > 0, in client-id order so every
        engine does identical arithmetic; the default is FedAvg with server learning rate 1,
        w + sum_k (r_k / sum_j r_j) Delta_k (fedlabel.robust for the robust rules)."""
        updates = sorted((u for u in updates if u.weight > 0), key=lambda u: u.client_id)
        if not updates:
            return {k: v.clone() for k, v in global_params.items()}
        step = combine(
            global_params, [u.deltas["model"] for u in updates], [u.weight for u in updates]
        )
        return {k: global_params[k] + step[k] for k in global_params}
