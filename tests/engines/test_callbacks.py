"""The loop's callbacks on real (shrunk) runs: early stopping, MLflow and TensorBoard hparams."""

import json

import pytest
import torch

import fedlabel
from fedlabel.checkpoint import load_checkpoint
from fedlabel.errors import ConfigError
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_target_accuracy_stops_the_run_and_a_finished_run_is_not_resumed(tmp_path):
    stop = ["rounds=3", "stop.target_accuracy=0.01"]  # any trained model reaches 1%
    summary = fedlabel.run(
        tiny_config(tmp_path, algorithm="fedavg", overrides=stop), progress=False
    )
    assert summary["status"] == "stopped_early" and [r["round"] for r in summary["rounds"]] == [1]
    assert summary["stop_reason"].endswith("at round 1 reached stop.target_accuracy=0.01")
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text()) == summary and (out / "model.pt").exists()
    assert (
        load_checkpoint(out)["round"] == 1
        and load_checkpoint(out)["stop_reason"] == summary["stop_reason"]
    )
    with pytest.raises(ConfigError, match="stopped early after round 1 and is finished"):
        fedlabel.run(
            tiny_config(tmp_path, algorithm="fedavg", overrides=[*stop, "resume=true"]),
            progress=False,
        )
    assert (
        json.loads((out / "summary.json").read_text()) == summary
    )  # the refused resume wrote nothing
    resumed = fedlabel.run(
        tiny_config(tmp_path, algorithm="fedavg", overrides=["rounds=2", "resume=true"]),
        progress=False,
    )
    assert resumed["status"] == "completed" and [r["round"] for r in resumed["rounds"]] == [1, 2]
    assert "stop_reason" not in resumed


def test_patience_stops_a_run_that_does_not_improve(tmp_path):
    frozen = ["rounds=5", "algorithm.lr=1e-12", "stop.patience=2"]  # the model does not change
    summary = fedlabel.run(
        tiny_config(tmp_path, algorithm="fedavg", overrides=frozen), progress=False
    )
    assert summary["status"] == "stopped_early" and [r["round"] for r in summary["rounds"]] == [
        1,
        2,
        3,
    ]
    assert len({r["accuracy"] for r in summary["rounds"]}) == 1
    assert len({r["val_accuracy"] for r in summary["rounds"]}) == 1
    assert (  # judged on the validation set (data.val_fraction), not the test set
        summary["stop_reason"]
        == f"no validation accuracy above {summary['best_val_accuracy']:.4f} (round 1) in 2 rounds"
        " (stop.patience=2)"
    )


def test_mlflow_store_and_tensorboard_hparams_hold_the_run(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = tiny_config(
        tmp_path, algorithm="fedavg", overrides=["mlflow.enabled=true", "tensorboard=true"]
    )
    summary = fedlabel.run(cfg, progress=False)
    out = tmp_path / "run"
    assert summary["mlflow"]["tracking_uri"] == (out / "mlruns").as_uri()

    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fedlabel.status"] == "completed"
    assert run.data.params["algorithm.name"] == "fedavg" and run.data.params["rounds"] == "2"
    assert run.data.params["data.num_clients"] == "4"
    for key in ("accuracy", "loss", "loss_labeled", "clients"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [
            (r["round"], pytest.approx(r[key])) for r in summary["rounds"]
        ]
    assert "accuracy.png" in [a.path for a in client.list_artifacts(run.info.run_id)]

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert (
        hparams["algorithm.name"].string_value == "fedavg"
        and hparams["algorithm.lr"].number_value > 0
    )
    for tag, key in (
        ("final_accuracy", "final_accuracy"),
        ("best_val_accuracy", "best_val_accuracy"),
        ("final_ece", "ece"),
    ):
        final = events.Scalars(f"hparam/{tag}")
        assert summary[key] is not None
        assert [pytest.approx(e.value) for e in final] == [summary[key]]
    assert [e.step for e in events.Scalars("accuracy")] == [1, 2]
    assert torch.load(out / "model.pt")  # the run itself is unchanged by its loggers
