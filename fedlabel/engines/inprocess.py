"""The in-process engine: the server loop calling client updates directly, no Flower between."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedlabel.algorithms import build_algorithm
from fedlabel.config import Config
from fedlabel.faults import draw_fault, seen_by_server
from fedlabel.federation import client_generator, initial_model, load_federated, open_recorder, run_federation
from fedlabel.training import Params, resolve_device


def run_inprocess(cfg: Config, *, progress: bool = True, on_round: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the whole simulation in this process; returns the summary dict. ``on_round`` is
    called with each round's record (e.g. to sample memory)."""
    device = resolve_device(cfg.device)
    fed = load_federated(cfg)
    model, params = initial_model(cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size)
    algorithm = build_algorithm(cfg.algorithm)
    recorder = open_recorder(cfg, progress=progress, on_round=on_round)
    recorder.write_json("clients.json", fed.client_stats())

    def train_client(rnd: int, cid: int, global_params: Params, extras: dict):
        fault = draw_fault(cfg.faults, seed=cfg.seed, round=rnd, client_id=cid)
        if fault is not None:  # what the server would see of it: an error, or nothing in time
            return seen_by_server(fault, cid)
        generator = client_generator(seed=cfg.seed, round=rnd, client_id=cid)
        return algorithm.client_update(model, global_params, fed.clients[cid], generator=generator, device=device,
                                       **({"extras": extras[cid]} if extras.get(cid) else {}))  # fmt: skip

    def train_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict):
        return [train_client(rnd, cid, global_params, extras) for cid in cohort]

    return run_federation(
        cfg,
        model=model,
        params=params,
        test_images=fed.test_images,
        test_labels=fed.test_labels,
        train_cohort=train_cohort,
        recorder=recorder,
        device=device,
        client_sizes={c.client_id: c.num_labeled + c.num_unlabeled for c in fed.clients},
    )
