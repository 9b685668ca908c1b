"""The server side of a federated run, independent of transport.

Both engines call :func:`run_federation`; they differ only in ``train_cohort``, which turns
(round, client ids, global parameters) into client updates: a direct call in-process, Flower
messages on the Flower engine. Seeding is derived from (seed, round, client id), never from
call order, so both engines draw the same cohorts and the same client randomness."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedlabel.algorithms import ROUND_FIELDS, Algorithm, ClientUpdate, build_algorithm
from fedlabel.algorithms.base import ServerSetup, StateDict
from fedlabel.callbacks import Callback, Round, Run, default_callbacks
from fedlabel.checkpoint import check_resumable, load_checkpoint
from fedlabel.config import Config, config_to_dict
from fedlabel.data import (
    DataError,
    FederatedData,
    ImageDataset,
    build_federated,
    evaluation_test_set,
    load_images,
    validation_set,
)
from fedlabel.faults import TIMEOUT, ClientFailure
from fedlabel.lifecycle import RunStopped
from fedlabel.llp.setup import bag_spec
from fedlabel.models import build_model
from fedlabel.privacy.mechanism import ServerPrivacy
from fedlabel.report import RunRecorder, round_fields
from fedlabel.robust import Limit, bound_influence, combiner
from fedlabel.training import Params, get_params
from fedlabel.validation import Rejection, screen_updates

log = logging.getLogger("fedlabel.server")

# One result per sampled client: its update, why it sent none, or why the transport rejected it.
CohortResult = ClientUpdate | ClientFailure | Rejection
# (round, cohort, global state, per-client extras from Algorithm.client_payload) -> results
TrainCohort = Callable[
    [int, list[int], Params, dict[int, dict[str, StateDict]]], list[CohortResult]
]


class RoundFailed(RuntimeError):
    """Fewer accepted updates than faults.min_clients: the round does not count and the run
    stops."""


def sample_cohort(*, seed: int, round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """Client ids taking part in ``round``: uniform without replacement, sorted."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, round]))
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))


def client_generator(*, seed: int, round: int, client_id: int) -> torch.Generator:
    """The one source of randomness of a client's update in a round (batches, augmentation)."""
    state = np.random.SeedSequence([seed, 2, round, client_id]).generate_state(1, dtype=np.uint64)[
        0
    ]
    return torch.Generator().manual_seed(int(state))


def load_dataset(cfg: Config) -> ImageDataset:
    d = cfg.data
    return load_images(
        name=d.name, root=d.root, cache_dir=d.cache_dir, download=d.download, bag_key=d.bag_key
    )


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
        val_fraction=d.val_fraction,
        bags=bag_spec(cfg),
    )


def load_test(cfg: Config, dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's test set: the dataset's test split, or its data.test_samples subset."""
    return evaluation_test_set(dataset, seed=cfg.seed, test_samples=cfg.data.test_samples)


def load_validation(cfg: Config, dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's validation set: the share data.val_fraction of the training split that
    :func:`load_federated` holds out of every client (in a deployment, of the training split of
    the server's own data.root file; the sites' data never comes from it)."""
    d = cfg.data
    images, labels = validation_set(
        dataset, seed=cfg.seed, train_samples=d.train_samples, val_fraction=d.val_fraction
    )
    if d.val_fraction > 0 and len(labels) == 0:
        log.warning(
            "data.val_fraction=%g holds out no sample of %s's training split: no validation",
            d.val_fraction,
            dataset.name,
        )
    return images, labels


def initial_model(
    cfg: Config, *, in_channels: int, num_classes: int, image_size: int
) -> tuple[nn.Module, Params]:
    """The model skeleton and the seeded initial global parameters."""
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(
            cfg.model.name,
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            activation=cfg.model.activation,
        )
    except ValueError as err:
        raise DataError(
            f"model.name={cfg.model.name} cannot take this data ({in_channels} x {image_size} x"
            f" {image_size} images, {num_classes} classes): {err}"
        ) from err
    return model, get_params(model)


def open_recorder(
    cfg: Config, *, progress: bool, on_round: Callable[[dict], None] | None = None
) -> RunRecorder:
    """The run's recorder. With cfg.resume, the checkpoint in cfg.output_dir is checked against
    cfg (ConfigError naming the differing fields, or saying that the run stopped early and
    would stop there again) and its rounds are restored; nothing is written or shown before that
    check passes."""
    config = config_to_dict(cfg)
    state = None
    if cfg.resume:
        state = load_checkpoint(cfg.output_dir)
        check_resumable(state, config)
    recorder = RunRecorder(
        cfg.output_dir,
        config=config,
        total_rounds=cfg.rounds,
        progress=progress,
        resume=cfg.resume,
        on_round=on_round,
        fields=round_fields(ROUND_FIELDS),
    )
    if state is not None:
        recorder.restore(
            state["rounds"],
            wall_seconds=state["wall_seconds"],
            cpu_seconds=state.get("cpu_seconds", 0.0),  # absent before 2026-12
        )
    return recorder


def run_federation(
    cfg: Config,
    *,
    model: nn.Module,
    params: Params,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    train_cohort: TrainCohort,
    recorder: RunRecorder,
    device: torch.device,
    client_sizes: dict[int, int] | None = None,
) -> dict:
    """Run cfg.rounds rounds: sample, train (via ``train_cohort``), screen the updates,
    aggregate, then the callbacks of :func:`fedlabel.callbacks.default_callbacks` (evaluate,
    account, record, stop early, checkpoint, ...). With cfg.resume, continue from the
    checkpoint in the recorder's directory (``recorder`` from :func:`open_recorder`).
    ``client_sizes`` (samples per client) bounds each weight r_k. The test set and the
    validation set (:func:`load_validation`; empty: none) are evaluated centrally. Saves the
    final parameters as model.pt and returns the summary (status completed, or stopped_early);
    on any error the summary is closed as failed, on RunStopped (a signal) as stopped, with the
    rounds recorded so far (the last checkpoint stays), and the error re-raised."""
    algorithm = build_algorithm(cfg.algorithm)
    privacy = ServerPrivacy(cfg)
    setup = ServerSetup(model=model, seed=cfg.seed, input_shape=tuple(test_images.shape[1:]))
    run = Run(
        cfg,
        algorithm,
        algorithm.init_global({k: v.to(device) for k, v in params.items()}, setup=setup),
    )
    callbacks = default_callbacks(
        cfg,
        recorder=recorder,
        privacy=privacy,
        model=model,
        test=(test_images, test_labels),
        val=(val_images, val_labels),
        device=device,
    )
    try:
        for callback in callbacks:
            callback.on_start(run)
        _rounds(
            run, callbacks, train_cohort=train_cohort, privacy=privacy, client_sizes=client_sizes
        )
        torch.save(
            {k: v.cpu() for k, v in algorithm.eval_params(run.params).items()},
            recorder.dir / "model.pt",
        )
    except RunStopped as err:
        _end(run, callbacks, status="stopped", error=str(err))
        raise
    except BaseException as err:
        _end(run, callbacks, status="failed", error=f"{type(err).__name__}: {err}")
        raise
    _end(run, callbacks, status="stopped_early" if run.stop_reason else "completed", error=None)
    return json.loads((recorder.dir / "summary.json").read_text())


def _end(run: Run, callbacks: list[Callback], *, status: str, error: str | None) -> None:
    for callback in callbacks:
        callback.on_end(run, status=status, error=error)


def _rounds(
    run: Run,
    callbacks: list[Callback],
    *,
    train_cohort: TrainCohort,
    privacy: ServerPrivacy,
    client_sizes: dict[int, int] | None,
) -> None:
    cfg, algorithm = run.cfg, run.algorithm
    a = cfg.aggregation
    combine = combiner(
        a.robust,
        trim_fraction=a.trim_fraction,
        krum_malicious=a.krum_malicious,
        krum_select=a.krum_select,
    )
    for number in range(run.first_round, cfg.rounds + 1):
        started = time.perf_counter()
        cohort = sample_cohort(
            seed=cfg.seed,
            round=number,
            num_clients=cfg.data.num_clients,
            clients_per_round=cfg.clients_per_round,
        )
        results = train_cohort(
            number, cohort, run.params, algorithm.client_payload(number, cohort, run.params)
        )
        accepted, failed, rejected = screen_round(
            cfg, algorithm, number, cohort, results, run.params, client_sizes=client_sizes
        )
        bounded, limits = bound_round(cfg, number, accepted)
        run.params = privacy.aggregate(
            algorithm, run.params, bounded, round=number, combine=combine
        )
        record = {
            "round": number,
            **dict.fromkeys(
                ROUND_FIELDS
            ),  # every algorithm's columns, None unless this one reports them
            **algorithm.pool_metrics(accepted),
            "failed_clients": len(failed),
            "rejected_updates": len(rejected),
            "participants": sorted(u.client_id for u in accepted),
            "failed": [f.record() for f in failed],
            "rejected": [r.record() for r in rejected],
            "bounded": [b.record() for b in limits],
        }
        rnd = Round(number, accepted, record, started)
        for callback in callbacks:
            callback.on_round_end(run, rnd)
        if run.stop_reason:
            return


def bound_round(
    cfg: Config, rnd: int, accepted: list[ClientUpdate]
) -> tuple[list[ClientUpdate], list[Limit]]:
    """The accepted updates with each one's influence bounded relative to the cohort
    (cfg.aggregation;
    fedlabel.robust), logging every bound applied. Not under privacy=central_dp, whose fixed
    clipping
    and equal weights bound each update (a cohort-relative bound would raise its sensitivity)."""
    if cfg.privacy.name == "central_dp":
        return accepted, []
    a = cfg.aggregation
    bounded, limits = bound_influence(
        accepted, clip_to_median=a.clip_to_median, weight_to_median=a.weight_to_median
    )
    for b in limits:
        log.warning(
            "round %d: update of client %d bounded (%s): %s", rnd, b.client_id, b.kind, b.detail
        )
    return bounded, limits


def screen_round(
    cfg: Config,
    algorithm: Algorithm,
    rnd: int,
    cohort: list[int],
    results: list[CohortResult],
    global_params: Params,
    *,
    client_sizes: dict[int, int] | None = None,
) -> tuple[list[ClientUpdate], list[ClientFailure], list[Rejection]]:
    """Sort a round's results into (accepted updates, failed clients, rejected updates), logging
    every failure and rejection with the client id; RoundFailed below faults.min_clients."""
    failed = [r for r in results if isinstance(r, ClientFailure)]
    rejected = [r for r in results if isinstance(r, Rejection)]
    updates = [r for r in results if isinstance(r, ClientUpdate)]
    accepted, bad = screen_updates(
        updates,
        global_params,
        cohort=cohort,
        delta_names=algorithm.delta_names(),
        max_update_norm=cfg.faults.max_update_norm,
        client_sizes=client_sizes,
        unlabeled_passes=cfg.algorithm.local_steps if algorithm.counts_unlabeled_per_step else 1,
    )
    rejected += bad
    heard = {r.client_id for r in results}
    failed += [ClientFailure(cid, TIMEOUT, "no result") for cid in cohort if cid not in heard]
    for f in failed:
        log.warning("round %d: client %d failed (%s) %s", rnd, f.client_id, f.reason, f.detail)
    for r in rejected:
        log.warning(
            "round %d: update of client %d rejected (%s): %s", rnd, r.client_id, r.reason, r.detail
        )
    if len(accepted) < cfg.faults.min_clients:
        raise RoundFailed(
            f"round {rnd}: {len(accepted)} of {len(cohort)} sampled clients sent an accepted"
            f" update, fewer than faults.min_clients={cfg.faults.min_clients} (failed:"
            f" {[(f.client_id, f.reason) for f in failed]}; rejected:"
            f" {[(r.client_id, r.reason) for r in rejected]})"
        )
    return accepted, failed, rejected
