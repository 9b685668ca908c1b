"""The in-process engine: the server loop calling client updates directly, no Flower between."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedlabel.algorithms import Algorithm, build_algorithm
from fedlabel.config import Config, config_to_dict
from fedlabel.data import FederatedData
from fedlabel.federation import TrainCohort, client_generator, initial_model, load_federated, run_federation
from fedlabel.report import RunRecorder
from fedlabel.training import Params, resolve_device

# (config, model skeleton, algorithm, data, device) -> the round's client training
CohortTrainerFactory = Callable[[Config, nn.Module, Algorithm, FederatedData, torch.device], TrainCohort]


def sequential_trainer(cfg: Config, model: nn.Module, algorithm: Algorithm, fed: FederatedData, device: torch.device) -> TrainCohort:
    """Clients of a cohort trained one after another, each with its own generator."""

    def train_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict):
        return [
            algorithm.client_update(
                model,
                global_params,
                fed.clients[cid],
                generator=client_generator(seed=cfg.seed, round=rnd, client_id=cid),
                device=device,
                **({"extras": extras[cid]} if extras.get(cid) else {}),
            )
            for cid in cohort
        ]

    return train_cohort


def run_inprocess(cfg: Config, *, progress: bool = True, trainer: CohortTrainerFactory = sequential_trainer) -> dict[str, Any]:
    """Run the whole simulation in this process; returns the summary dict."""
    device = resolve_device(cfg.device)
    fed = load_federated(cfg)
    model, params = initial_model(cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size)
    algorithm = build_algorithm(cfg.algorithm)
    recorder = RunRecorder(cfg.output_dir, config=config_to_dict(cfg), total_rounds=cfg.rounds, progress=progress)
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
            test_images=fed.test_images,
            test_labels=fed.test_labels,
            train_cohort=train_cohort,
            recorder=recorder,
            device=device,
        )
    finally:
        getattr(train_cohort, "close", lambda: None)()  # worker processes end with the run
