"""The server side of a federated run, independent of transport.

Both engines call :func:`run_federation`; they differ only in ``train_cohort``, which turns
(round, client ids, global parameters) into client updates: a direct call in-process, Flower
messages on the Flower engine. Seeding is derived from (seed, round, client id), never from
call order, so both engines draw the same cohorts and the same client randomness."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedlabel.algorithms import Algorithm, ClientUpdate, build_algorithm
from fedlabel.algorithms.base import ServerSetup, StateDict
from fedlabel.checkpoint import check_resumable, load_checkpoint, save_checkpoint, set_rng_states
from fedlabel.config import Config, config_to_dict
from fedlabel.data import DataError, FederatedData, ImageDataset, build_federated, load_images
from fedlabel.faults import TIMEOUT, ClientFailure
from fedlabel.lifecycle import RunStopped
from fedlabel.models import build_model
from fedlabel.privacy.mechanism import ServerPrivacy
from fedlabel.report import RunRecorder
from fedlabel.robust import Limit, bound_influence, combiner
from fedlabel.training import Params, evaluate, get_params
from fedlabel.validation import Rejection, screen_updates
from fedlabel.llp.setup import bag_spec, proportion_epsilon

log = logging.getLogger("fedlabel.server")

# One result per sampled client: its update, why it sent none, or why the transport rejected it.
CohortResult = ClientUpdate | ClientFailure | Rejection
# (round, cohort, global state, per-client extras from Algorithm.client_payload) -> results
TrainCohort = Callable[[int, list[int], Params, dict[int, dict[str, StateDict]]], list[CohortResult]]


class RoundFailed(RuntimeError):
    """Fewer accepted updates than faults.min_clients: the round does not count and the run stops."""


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
    return load_images(name=d.name, root=d.root, cache_dir=d.cache_dir, download=d.download, bag_key=d.bag_key)


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
        bags=bag_spec(cfg),
    )


def initial_model(cfg: Config, *, in_channels: int, num_classes: int, image_size: int) -> tuple[nn.Module, Params]:
    """The model skeleton and the seeded initial global parameters."""
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model.name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    except ValueError as err:
        raise DataError(
            f"model.name={cfg.model.name} cannot take this data ({in_channels} x {image_size} x {image_size} images, "
            f"{num_classes} classes): {err}"
        ) from err
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


def open_recorder(cfg: Config, *, progress: bool, on_round: Callable[[dict], None] | None = None) -> RunRecorder:
    """The run's recorder. With cfg.resume, the checkpoint in cfg.output_dir is checked against
    cfg (ConfigError naming the differing fields) and its rounds are restored; nothing is written
    or shown before that check passes."""
    config = config_to_dict(cfg)
    state = None
    if cfg.resume:
        state = load_checkpoint(cfg.output_dir)
        check_resumable(state, config)
    recorder = RunRecorder(
        cfg.output_dir, config=config, total_rounds=cfg.rounds, progress=progress, resume=cfg.resume, on_round=on_round
    )
    if state is not None:
        recorder.restore(state["rounds"], wall_seconds=state["wall_seconds"])
    return recorder


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
    client_sizes: dict[int, int] | None = None,
) -> dict:
    """Run cfg.rounds rounds: sample, train (via ``train_cohort``), screen the updates,
    aggregate, evaluate, record, checkpoint. With cfg.resume, continue from the checkpoint in
    the recorder's directory (``recorder`` from :func:`open_recorder`). ``client_sizes``
    (samples per client) bounds each weight r_k. Saves the final parameters as model.pt and
    returns the summary; on any error the summary is closed as failed, on RunStopped (a signal)
    as stopped, with the rounds recorded so far (the last checkpoint stays), and the error
    re-raised."""
    try:
        params = _rounds(cfg, model=model, params=params, test_images=test_images, test_labels=test_labels,
                         train_cohort=train_cohort, recorder=recorder, device=device, client_sizes=client_sizes)  # fmt: skip
    except RunStopped as err:
        recorder.finish(error=str(err), stopped=True)
        raise
    except BaseException as err:
        recorder.finish(error=f"{type(err).__name__}: {err}")
        raise
    torch.save({k: v.cpu() for k, v in params.items()}, recorder.dir / "model.pt")
    return recorder.finish()


def _rounds(cfg: Config, *, model, params, test_images, test_labels, train_cohort, recorder, device, client_sizes) -> Params:
    algorithm = build_algorithm(cfg.algorithm)
    privacy = ServerPrivacy(cfg)
    a = cfg.aggregation
    combine = combiner(a.robust, trim_fraction=a.trim_fraction, krum_malicious=a.krum_malicious,
                       krum_select=a.krum_select)  # fmt: skip
    setup = ServerSetup(model=model, seed=cfg.seed, input_shape=tuple(test_images.shape[1:]))
    params = algorithm.init_global({k: v.to(device) for k, v in params.items()}, setup=setup)
    first = 1
    if cfg.resume:  # the checkpoint's global state replaces the initial one
        state = load_checkpoint(recorder.dir)
        params, first = {k: v.to(device) for k, v in state["params"].items()}, state["round"] + 1
        algorithm.load_state_dict(state["algorithm"])
        privacy.load_state_dict(state.get("privacy") or {})
        set_rng_states(state["rng"])
    for rnd in range(first, cfg.rounds + 1):
        start = time.perf_counter()
        cohort = sample_cohort(
            seed=cfg.seed, round=rnd, num_clients=cfg.data.num_clients, clients_per_round=cfg.clients_per_round
        )
        results = train_cohort(rnd, cohort, params, algorithm.client_payload(rnd, cohort, params))
        accepted, failed, rejected = screen_round(cfg, algorithm, rnd, cohort, results, params, client_sizes=client_sizes)
        bounded, limits = bound_round(cfg, rnd, accepted)
        params = privacy.aggregate(algorithm, params, bounded, round=rnd, combine=combine)
        record = {"round": rnd, **pool_metrics(accepted), "failed_clients": len(failed), "rejected_updates": len(rejected),
                  "epsilon": privacy.account(accepted)}
        if rnd % cfg.eval_every == 0 or rnd > cfg.rounds - max(cfg.eval_last, 1):
            record["accuracy"], record["loss"] = evaluate(model, algorithm.eval_params(params), test_images, test_labels, device=device)
        else:
            record["accuracy"] = record["loss"] = None
        record["proportion_epsilon"] = proportion_epsilon(cfg)  # label-DP of the bag counts (None: none)
        record["seconds"] = time.perf_counter() - start
        record["participants"] = sorted(u.client_id for u in accepted)
        record["failed"] = [f.record() for f in failed]
        record["rejected"] = [r.record() for r in rejected]
        record["bounded"] = [b.record() for b in limits]
        recorder.extra["privacy"] = privacy.summary()
        recorder.log_round(record)
        if rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds:
            save_checkpoint(recorder.dir, round=rnd, params=params, algorithm_state=algorithm.state_dict(),
                            rounds=recorder.rounds, config=recorder.config, wall_seconds=recorder.wall_seconds(),
                            privacy_state=privacy.state_dict())  # fmt: skip
    return algorithm.eval_params(params)


def bound_round(cfg: Config, rnd: int, accepted: list[ClientUpdate]) -> tuple[list[ClientUpdate], list[Limit]]:
    """The accepted updates with each one's influence bounded relative to the cohort (cfg.aggregation;
    fedlabel.robust), logging every bound applied. Not under privacy=central_dp, whose fixed clipping
    and equal weights bound each update (a cohort-relative bound would raise its sensitivity)."""
    if cfg.privacy.name == "central_dp":
        return accepted, []
    a = cfg.aggregation
    bounded, limits = bound_influence(accepted, clip_to_median=a.clip_to_median, weight_to_median=a.weight_to_median)
    for b in limits:
        log.warning("round %d: update of client %d bounded (%s): %s", rnd, b.client_id, b.kind, b.detail)
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
        updates, global_params, cohort=cohort, delta_names=algorithm.delta_names(),
        max_update_norm=cfg.faults.max_update_norm, client_sizes=client_sizes,
        unlabeled_passes=cfg.algorithm.local_steps if algorithm.counts_unlabeled_per_step else 1,
    )  # fmt: skip
    rejected += bad
    heard = {r.client_id for r in results}
    failed += [ClientFailure(cid, TIMEOUT, "no result") for cid in cohort if cid not in heard]
    for f in failed:
        log.warning("round %d: client %d failed (%s) %s", rnd, f.client_id, f.reason, f.detail)
    for r in rejected:
        log.warning("round %d: update of client %d rejected (%s): %s", rnd, r.client_id, r.reason, r.detail)
    if len(accepted) < cfg.faults.min_clients:
        raise RoundFailed(
            f"round {rnd}: {len(accepted)} of {len(cohort)} sampled clients sent an accepted update, fewer than "
            f"faults.min_clients={cfg.faults.min_clients} (failed: {[(f.client_id, f.reason) for f in failed]}; "
            f"rejected: {[(r.client_id, r.reason) for r in rejected]})"
        )
    return accepted, failed, rejected
