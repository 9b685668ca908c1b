"""The server loop's cross-cutting work, one concern per callback.

:func:`fedlabel.federation.run_federation` trains and aggregates each round, then calls every
callback of :func:`default_callbacks` in list order: each sees the fields that earlier ones
added to the round's record. A callback may end the run after a round (``run.stop(reason)``);
the run then ends as ``stopped_early``. To add one, subclass :class:`Callback` and override the
hooks it needs:

- ``on_start(run)``: before the first round (a resumed run: before the first new round);
- ``on_round_end(run, rnd)``: after round ``rnd.number``'s aggregation; add fields to
  ``rnd.record``, the row that summary.json and rounds.csv get;
- ``on_end(run, status=, error=)``: once, however the run ends (completed, stopped_early,
  stopped, failed)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedlabel.algorithms import Algorithm, ClientUpdate
from fedlabel.calibration import Reliability, logits_reliability
from fedlabel.checkpoint import load_checkpoint, save_checkpoint, set_rng_states
from fedlabel.config import Config, config_to_dict, flatten
from fedlabel.llp.setup import proportion_epsilon
from fedlabel.privacy.mechanism import ServerPrivacy
from fedlabel.report import RunRecorder, plot_reliability
from fedlabel.stopping import stop_reason
from fedlabel.training import Params, evaluate, predict_logits, scores

log = logging.getLogger("fedlabel.server")


@dataclass
class Run:
    """What the loop shares with its callbacks."""

    cfg: Config
    algorithm: Algorithm
    params: Params  # the global state, after the latest aggregation
    first_round: int = 1  # a resumed run goes on after its checkpoint's round
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """End the run after this round (status stopped_early, ``reason`` in the summary)."""
        self.stop_reason = self.stop_reason or reason


@dataclass
class Round:
    """One finished round, as the callbacks see it."""

    number: int
    accepted: list[ClientUpdate]  # the updates that were aggregated
    record: dict[str, Any]  # the round's row; callbacks add their fields
    started: float  # time.perf_counter() when the round began


class Callback:
    """One concern of the server loop; every hook does nothing unless overridden."""

    def on_start(self, run: Run) -> None:
        pass

    def on_round_end(self, run: Run, rnd: Round) -> None:
        pass

    def on_end(self, run: Run, *, status: str, error: str | None) -> None:
        pass


class PrivacyAccounting(Callback):
    """Composes each round's DP releases: the round's ``epsilon`` and summary.json's "privacy"."""

    def __init__(self, privacy: ServerPrivacy, recorder: RunRecorder) -> None:
        self.privacy, self.recorder = privacy, recorder

    def on_round_end(self, run: Run, rnd: Round) -> None:
        rnd.record["epsilon"] = self.privacy.account(rnd.accepted)
        self.recorder.extra["privacy"] = self.privacy.summary()


class CentralEvaluation(Callback):
    """Every cfg.eval_every rounds, the last cfg.eval_last rounds and the last round (None in
    the other rounds): the test set's ``accuracy``, ``loss`` and ``ece`` (expected calibration
    error, fedlabel.calibration), and the validation set's ``val_accuracy`` and ``val_loss``
    (None without one: data.val_fraction=0). When the run ends, reliability.png of the last
    evaluation on the test set."""

    FIELDS = ("accuracy", "loss", "ece", "val_accuracy", "val_loss")

    def __init__(
        self,
        model: nn.Module,
        test: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        device: torch.device,
        recorder: RunRecorder,
    ) -> None:
        self.model, self.test, self.val, self.device = model, test, val, device
        self.recorder = recorder
        self.reliability: Reliability | None = None

    def on_round_end(self, run: Run, rnd: Round) -> None:
        cfg, n, record = run.cfg, rnd.number, rnd.record
        record.update(dict.fromkeys(self.FIELDS))
        if not (n % cfg.eval_every == 0 or n > cfg.rounds - max(cfg.eval_last, 1)):
            return
        params = run.algorithm.eval_params(run.params)
        images, labels = self.test
        logits = predict_logits(self.model, params, images, device=self.device)
        record["accuracy"], record["loss"] = scores(logits, labels)
        self.reliability = logits_reliability(logits, labels)
        record["ece"] = self.reliability.ece
        if len(self.val[1]):
            record["val_accuracy"], record["val_loss"] = evaluate(
                self.model, params, *self.val, device=self.device
            )

    def on_end(self, run: Run, *, status: str, error: str | None) -> None:
        if self.reliability is not None:
            plot_reliability(
                self.reliability,
                self.recorder.dir / "reliability.png",
                title=run.cfg.algorithm.name,
            )


class LlpEpsilon(Callback):
    """``proportion_epsilon``: the label-DP epsilon of the released bag counts (None: none)."""

    def __init__(self, cfg: Config) -> None:
        self.epsilon = proportion_epsilon(cfg)

    def on_round_end(self, run: Run, rnd: Round) -> None:
        rnd.record["proportion_epsilon"] = self.epsilon


class Recording(Callback):
    """The round's ``seconds``, then the record into summary.json, rounds.csv and the progress
    bar; closes the summary (and draws accuracy.png) when the run ends."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder

    def on_round_end(self, run: Run, rnd: Round) -> None:
        rnd.record["seconds"] = time.perf_counter() - rnd.started
        self.recorder.log_round(rnd.record)

    def on_end(self, run: Run, *, status: str, error: str | None) -> None:
        self.recorder.finish(error=error, stopped=status == "stopped", stop_reason=run.stop_reason)


class EarlyStopping(Callback):
    """Ends the run by cfg.stop (fedlabel.stopping); after Recording, whose rounds it reads (so a
    resumed run goes on judging the rounds before its checkpoint)."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder

    def on_round_end(self, run: Run, rnd: Round) -> None:
        stop = run.cfg.stop
        reason = stop_reason(
            self.recorder.rounds, patience=stop.patience, target_accuracy=stop.target_accuracy
        )
        if reason:
            log.info("round %d: stopping early: %s", rnd.number, reason)
            run.stop(reason)


class Checkpointing(Callback):
    """checkpoint.pt every cfg.checkpoint_every rounds and after the last (or stopping) round;
    with cfg.resume, the checkpoint's global state, algorithm and privacy state and RNG states
    replace the initial ones. Last in the list: it saves what every other callback did."""

    def __init__(self, recorder: RunRecorder, privacy: ServerPrivacy) -> None:
        self.recorder, self.privacy = recorder, privacy

    def on_start(self, run: Run) -> None:
        if not run.cfg.resume:
            return
        state = load_checkpoint(self.recorder.dir)
        device = next(iter(run.params.values())).device
        run.params = {k: v.to(device) for k, v in state["params"].items()}
        run.first_round = state["round"] + 1
        run.algorithm.load_state_dict(state["algorithm"])
        self.privacy.load_state_dict(state.get("privacy") or {})
        set_rng_states(state["rng"])

    def on_round_end(self, run: Run, rnd: Round) -> None:
        n, cfg, r = rnd.number, run.cfg, self.recorder
        if n % cfg.checkpoint_every == 0 or n == cfg.rounds or run.stop_reason:
            save_checkpoint(
                r.dir,
                round=n,
                params=run.params,
                algorithm_state=run.algorithm.state_dict(),
                rounds=r.rounds,
                config=r.config,
                wall_seconds=r.wall_seconds(),
                cpu_seconds=r.cpu_seconds(),
                privacy_state=self.privacy.state_dict(),
                stop_reason=run.stop_reason,
            )


def _numbers(record: dict[str, Any], keys: list[str]) -> dict[str, float]:
    return {
        k: record[k]
        for k in keys
        if isinstance(record.get(k), (int, float)) and not isinstance(record[k], bool)
    }


def _hparams(cfg: Config) -> dict[str, Any]:
    """The run's config, flat (``algorithm.lr``), as TensorBoard/MLflow parameters."""
    return flatten(config_to_dict(cfg))


def _final_metrics(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """The run's final accuracy, loss and ECE, best test and validation accuracy, rounds run
    and latest epsilons (DP-SGD/central DP, and label-DP's as label_epsilon)."""
    evaluated = [r for r in rounds if r.get("accuracy") is not None]
    out: dict[str, float] = {"rounds_run": float(len(rounds))}
    if evaluated:
        out |= {
            "final_accuracy": evaluated[-1]["accuracy"],
            "best_accuracy": max(r["accuracy"] for r in evaluated),
        }
        for key, name in (("loss", "final_loss"), ("ece", "final_ece")):
            if evaluated[-1].get(key) is not None:
                out[name] = evaluated[-1][key]
    validated = [r["val_accuracy"] for r in rounds if r.get("val_accuracy") is not None]
    if validated:
        out["best_val_accuracy"] = max(validated)
    for key, name in (("epsilon", "epsilon"), ("proportion_epsilon", "label_epsilon")):
        if rounds and rounds[-1].get(key) is not None:
            out[name] = rounds[-1][key]
    return out


class TensorBoardLog(Callback):
    """tensorboard=true: every rounds.csv column as a scalar per round in output_dir/tensorboard,
    and, when the run completes or stops early, its config as hparams with the final metrics
    (TensorBoard's HPARAMS tab compares runs of one --logdir)."""

    def __init__(self, recorder: RunRecorder) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RuntimeError(
                "tensorboard=true needs the optional package: pip install 'fedlabel[tensorboard]'"
            ) from err
        self.recorder = recorder
        self.writer = SummaryWriter(log_dir=str(recorder.dir / "tensorboard"))

    def on_round_end(self, run: Run, rnd: Round) -> None:
        for key, value in _numbers(rnd.record, self.recorder.fields[1:]).items():
            self.writer.add_scalar(key, value, global_step=rnd.number)
        self.writer.flush()

    def on_end(self, run: Run, *, status: str, error: str | None) -> None:
        if status in ("completed", "stopped_early"):
            self.write_hparams(_hparams(run.cfg), _final_metrics(self.recorder.rounds))
        self.writer.close()

    def write_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The hparams summary into this run's own event file (not a sub-run), its metrics as
        scalars named hparam/<name>."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        tagged = {f"hparam/{k}": v for k, v in metrics.items()}
        for summary in hparams_summary(hparams, tagged):
            self.writer.file_writer.add_summary(summary)
        step = int(metrics.get("rounds_run", 0))
        for key, value in tagged.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()


class MlflowLog(Callback):
    """mlflow.enabled=true: one MLflow run per fedlabel run (a resumed run continues its MLflow
    run) with the config as params, every numeric round field as a metric per round, and the
    run's PNGs as artifacts at the end. The default store is a file store in output_dir/mlruns
    (``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <output_dir>/mlruns``)."""

    TAG = "fedlabel.output_dir"

    def __init__(self, cfg: Config, recorder: RunRecorder) -> None:
        self.recorder = recorder
        self.uri = cfg.mlflow.tracking_uri or (recorder.dir / "mlruns").resolve().as_uri()
        self.experiment = cfg.mlflow.experiment
        self.client, self.run_id = None, None

    def on_start(self, run: Run) -> None:
        if self.uri.startswith("file:"):  # MLflow 3 keeps the file store only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        out = str(self.recorder.dir.resolve())
        earlier = (
            client.search_runs(
                [exp_id],
                filter_string=f"tags.`{self.TAG}` = '{out}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if run.cfg.resume
            else []
        )
        if earlier:
            self.run_id = earlier[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = client.create_run(
                exp_id, run_name=self.recorder.dir.name, tags={self.TAG: out}
            ).info.run_id
        logged = set(client.get_run(self.run_id).data.params)  # a param keeps its first value
        params = [Param(k, str(v)) for k, v in _hparams(run.cfg).items() if k not in logged]
        client.log_batch(self.run_id, params=params)
        self.recorder.extra["mlflow"] = {"tracking_uri": self.uri, "run_id": self.run_id}

    def on_round_end(self, run: Run, rnd: Round) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fields = [k for k in rnd.record if k != "round"]
        metrics = [
            Metric(k, float(v), now, rnd.number) for k, v in _numbers(rnd.record, fields).items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_end(self, run: Run, *, status: str, error: str | None) -> None:
        if self.run_id is None:
            return
        for png in sorted(Path(self.recorder.dir).glob("*.png")):
            self.client.log_artifact(self.run_id, str(png))
        self.client.set_tag(self.run_id, "fedlabel.status", status)
        if run.stop_reason or error:
            self.client.set_tag(self.run_id, "fedlabel.reason", run.stop_reason or error)
        self.client.set_terminated(
            self.run_id, status={"stopped": "KILLED", "failed": "FAILED"}.get(status, "FINISHED")
        )


def default_callbacks(
    cfg: Config,
    *,
    recorder: RunRecorder,
    privacy: ServerPrivacy,
    model: nn.Module,
    test: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
) -> list[Callback]:
    """The loop's callbacks for ``cfg``, in the order they run; ``test`` and ``val`` are the
    (images, labels) of the central test and validation sets (an empty one: none)."""
    callbacks = [
        PrivacyAccounting(privacy, recorder),
        CentralEvaluation(model, test, val, device, recorder),
        LlpEpsilon(cfg),
        Recording(recorder),
    ]
    if cfg.stop.patience or cfg.stop.target_accuracy:
        callbacks.append(EarlyStopping(recorder))
    if cfg.tensorboard:
        callbacks.append(TensorBoardLog(recorder))
    if cfg.mlflow.enabled:
        callbacks.append(MlflowLog(cfg, recorder))
    return [*callbacks, Checkpointing(recorder, privacy)]
