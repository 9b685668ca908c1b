"""The server side of a federated run, independent of transport.

Both engines call :func:`run_federation`; they differ only in ``train_cohort``, which turns
(round, client ids, global parameters) into client updates: a direct call in-process, Flower
messages on the Flower engine. Seeding is derived from (seed, round, client id), never from
call order, so both engines draw the same cohorts and the same client randomness."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedlabel.algorithms import ClientUpdate, build_algorithm
from fedlabel.algorithms.base import ServerSetup, StateDict
from fedlabel.config import Config
from fedlabel.data import FederatedData, ImageDataset, build_federated, load_images
from fedlabel.models import build_model
from fedlabel.privacy.mechanism import ServerPrivacy
from fedlabel.report import RunRecorder
from fedlabel.training import Params, evaluate, get_params

# (round, cohort, global state, per-client extras from Algorithm.client_payload) -> updates
TrainCohort = Callable[[int, list[int], Params, dict[int, dict[str, StateDict]]], list[ClientUpdate]]


def sample_cohort(*, seed: int, round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """Client ids taking part in ``round``: uniform without replacement, sorted."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, round]))
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))


def client_generator(*, seed: int, round: int, client_id: int) -> torch.Generator:
    """The one source of randomness of a client's update in a round (batches, augmentation)."""
    state = np.random.SeedSequence([seed, 2, round, client_id]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def load_dataset(cfg: Config) -> ImageDataset:
    d = cfg.data
    return load_images(name=d.name, root=d.root, cache_dir=d.cache_dir, download=d.download)


def load_federated(cfg: Config, dataset: ImageDataset | None = None) -> FederatedData:
    """The seeded client partition of cfg.data (the same on every engine and process)."""
    d = cfg.data
    return build_federated(
        dataset if dataset is not None else load_dataset(cfg),
        num_clients=d.num_clients,
        partition=d.partition,
        alpha=d.alpha,
        min_client_size=d.min_client_size,
        label_ratio=d.label_ratio,
        labeled_class_alpha=d.labeled_class_alpha,
        seed=cfg.seed,
        train_samples=d.train_samples,
    )


def initial_model(cfg: Config, *, in_channels: int, num_classes: int, image_size: int) -> tuple[nn.Module, Params]:
    """The model skeleton and the seeded initial global parameters."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return model, get_params(model)


def pool_metrics(updates: list[ClientUpdate]) -> dict[str, float | None]:
    """Round metrics pooled over clients from their counters (exact, not a mean of ratios)."""

    def total(key: str) -> float:
        return float(sum(u.metrics.get(key, 0) for u in updates))

    def mean(key: str) -> float | None:
        vals = [u.metrics[key] for u in updates if key in u.metrics]
        return float(np.mean(vals)) if vals else None

    n_u, kept = total("num_unlabeled"), total("num_kept")
    has_truth = all("num_kept_correct" in u.metrics for u in updates) and any("num_kept" in u.metrics for u in updates)
    experts = any("num_kept_global" in u.metrics for u in updates)  # only FedLabel chooses an expert
    pooled = {
        "clients": len(updates),
        "pseudo_label_coverage": kept / n_u if n_u else None,
        "pseudo_label_accuracy": total("num_kept_correct") / kept if kept and has_truth else None,
        "global_expert_share": total("num_kept_global") / kept if kept and experts else None,
        # pseudo-label accuracy on the kept samples where the global (resp. local) model was the expert
        "global_expert_accuracy": total("num_kept_global_correct") / total("num_kept_global")
        if has_truth and total("num_kept_global")
        else None,
        "local_expert_accuracy": (total("num_kept_correct") - total("num_kept_global_correct")) / (kept - total("num_kept_global"))
        if has_truth and experts and kept - total("num_kept_global")
        else None,
        "loss_labeled": mean("loss_labeled"),
        "loss_unlabeled": mean("loss_unlabeled"),
    }
    if any("num_helper_models" in u.metrics for u in updates):  # FedMatch: helper models the clients received
        pooled["helper_models"] = int(total("num_helper_models"))
    return pooled


def run_federation(
    cfg: Config,
    *,
    model: nn.Module,
    params: Params,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    train_cohort: TrainCohort,
    recorder: RunRecorder,
    device: torch.device,
) -> dict:
    """Run cfg.rounds rounds: sample, train (via ``train_cohort``), aggregate, evaluate, record.
    Saves the final parameters as model.pt and returns the summary; on any error the summary
    is closed as failed (with the rounds recorded so far) and the error re-raised."""
    try:
        params = _rounds(cfg, model=model, params=params, test_images=test_images, test_labels=test_labels,
                         train_cohort=train_cohort, recorder=recorder, device=device)  # fmt: skip
    except BaseException as err:
        recorder.finish(error=f"{type(err).__name__}: {err}")
        raise
    torch.save({k: v.cpu() for k, v in params.items()}, recorder.dir / "model.pt")
    return recorder.finish()


def _rounds(cfg: Config, *, model, params, test_images, test_labels, train_cohort, recorder, device) -> Params:
    algorithm = build_algorithm(cfg.algorithm)
    privacy = ServerPrivacy(cfg)
    setup = ServerSetup(model=model, seed=cfg.seed, input_shape=tuple(test_images.shape[1:]))
    params = algorithm.init_global({k: v.to(device) for k, v in params.items()}, setup=setup)
    for rnd in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        cohort = sample_cohort(
            seed=cfg.seed, round=rnd, num_clients=cfg.data.num_clients, clients_per_round=cfg.clients_per_round
        )
        updates = train_cohort(rnd, cohort, params, algorithm.client_payload(rnd, cohort, params))
        if not updates:
            raise RuntimeError(f"round {rnd}: none of the {len(cohort)} sampled clients returned an update")
        params = privacy.aggregate(algorithm, params, updates, round=rnd)
        record = {"round": rnd, **pool_metrics(updates), "epsilon": privacy.account(updates)}
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            record["accuracy"], record["loss"] = evaluate(model, algorithm.eval_params(params), test_images, test_labels, device=device)
        else:
            record["accuracy"] = record["loss"] = None
        record["seconds"] = time.perf_counter() - start
        recorder.extra["privacy"] = privacy.summary()
        recorder.log_round(record)
    return algorithm.eval_params(params)
