"""The in-process engine: the server loop calling client updates directly, no Flower between."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedlabel.algorithms import Algorithm, ClientUpdate, build_algorithm
from fedlabel.config import Config
from fedlabel.data import FederatedData
from fedlabel.faults import claimed_size, draw_fault, seen_by_server, tamper
from fedlabel.federation import (
    TrainCohort,
    client_generator,
    initial_model,
    load_dataset,
    load_federated,
    load_test,
    load_validation,
    open_recorder,
    run_federation,
)
from fedlabel.privacy.mechanism import private_client_update
from fedlabel.training import Params, resolve_device

# (config, model skeleton, algorithm, data, device) -> the round's client training
CohortTrainerFactory = Callable[
    [Config, nn.Module, Algorithm, FederatedData, torch.device], TrainCohort
]


def sequential_trainer(
    cfg: Config, model: nn.Module, algorithm: Algorithm, fed: FederatedData, device: torch.device
) -> TrainCohort:
    """Clients of a cohort trained one after another, each with its own generator."""

    def train_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict):
        return [
            private_client_update(
                algorithm,
                cfg.privacy,
                model,
                global_params,
                fed.clients[cid],
                device=device,
                generator=client_generator(seed=cfg.seed, round=rnd, client_id=cid),
                extras=extras.get(cid),
            )
            for cid in cohort
        ]

    return train_cohort


def with_faults(cfg: Config, train_cohort: TrainCohort) -> TrainCohort:
    """Injected faults (cfg.faults) for any cohort trainer: a faulty client is not trained and
    the server sees what it would see of it (an error, or nothing before the deadline); the
    dishonest site's update is tampered with."""

    def faulty_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict):
        faults = {
            cid: draw_fault(cfg.faults, seed=cfg.seed, round=rnd, client_id=cid) for cid in cohort
        }
        healthy = [cid for cid in cohort if faults[cid] is None]
        results = train_cohort(rnd, healthy, global_params, extras) if healthy else []
        results = [tamper(cfg.faults, r) if isinstance(r, ClientUpdate) else r for r in results]
        return results + [
            seen_by_server(kind, cid) for cid, kind in faults.items() if kind is not None
        ]

    return faulty_cohort


def run_inprocess(
    cfg: Config,
    *,
    progress: bool = True,
    trainer: CohortTrainerFactory = sequential_trainer,
    on_round: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Run the whole simulation in this process; returns the summary dict. ``on_round`` is
    called with each round's record (e.g. to sample memory)."""
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg)
    fed = load_federated(cfg, dataset)
    test_images, test_labels = load_test(cfg, dataset)
    val_images, val_labels = load_validation(cfg, dataset)
    model, params = initial_model(
        cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size
    )
    algorithm = build_algorithm(cfg.algorithm)
    recorder = open_recorder(cfg, progress=progress, on_round=on_round)
    recorder.write_json("clients.json", fed.client_stats())
    if cfg.engine.workers > 1 and trainer is sequential_trainer:
        from fedlabel.engines.workers import WorkerPool

        trainer = WorkerPool
    train_cohort = trainer(cfg, model, algorithm, fed, device)
    try:
        return run_federation(
            cfg,
            model=model,
            params=params,
            test_images=test_images,
            test_labels=test_labels,
            val_images=val_images,
            val_labels=val_labels,
            train_cohort=with_faults(cfg, train_cohort),
            recorder=recorder,
            device=device,
            client_sizes={
                c.client_id: claimed_size(cfg.faults, c.client_id, c.num_labeled + c.num_unlabeled)
                for c in fed.clients
            },
        )
    finally:
        getattr(train_cohort, "close", lambda: None)()  # worker processes end with the run
