"""The in-process engine: the server loop calling client updates directly, no Flower between."""

from __future__ import annotations

from typing import Any

from fedlabel.algorithms import build_algorithm
from fedlabel.config import Config, config_to_dict
from fedlabel.federation import client_generator, initial_model, load_federated, run_federation
from fedlabel.privacy.mechanism import private_client_update
from fedlabel.report import RunRecorder
from fedlabel.training import Params, resolve_device


def run_inprocess(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole simulation in this process; returns the summary dict."""
    device = resolve_device(cfg.device)
    fed = load_federated(cfg)
    model, params = initial_model(cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size)
    algorithm = build_algorithm(cfg.algorithm)
    recorder = RunRecorder(cfg.output_dir, config=config_to_dict(cfg), total_rounds=cfg.rounds, progress=progress)
    recorder.write_json("clients.json", fed.client_stats())

    def train_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict):
        return [
            private_client_update(
                algorithm,
                cfg.privacy,
                model,
                global_params,
                fed.clients[cid],
                generator=client_generator(seed=cfg.seed, round=rnd, client_id=cid),
                device=device,
                **({"extras": extras[cid]} if extras.get(cid) else {}),
            )
            for cid in cohort
        ]

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
