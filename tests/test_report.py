"""Optional TensorBoard logging beside the CSV."""

import importlib.util

import pytest

from fedlabel.callbacks import Round, Run, TensorBoardLog
from fedlabel.config import Config, ConfigError, config_from_dict
from fedlabel.report import RunRecorder


def test_tensorboard_gets_every_numeric_round_metric(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = RunRecorder(tmp_path, config={"tensorboard": True}, total_rounds=2, progress=False)
    board = TensorBoardLog(rec)
    run = Run(Config(), algorithm=None, params={})
    for record in (
        {"round": 1, "accuracy": 0.5, "loss": 1.2, "pseudo_label_coverage": None, "clients": 3},
        {"round": 2, "accuracy": 0.75, "loss": 0.9, "pseudo_label_coverage": 0.4, "clients": 3},
    ):
        rec.log_round(record)
        board.on_round_end(run, Round(record["round"], [], record, started=0.0))
    rec.finish()
    board.on_end(
        run, status="failed", error="x"
    )  # hparams only for a run that completed or stopped early
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("pseudo_label_coverage")] == [
        (2, 0.4)
    ]
    assert "seconds" not in events.Tags()["scalars"]  # absent from the records, so not logged
    assert (tmp_path / "rounds.csv").read_text().count("\n") == 3  # the CSV as always


def test_no_tensorboard_directory_unless_asked(tmp_path):
    RunRecorder(tmp_path, config={}, total_rounds=1, progress=False).finish()
    assert not (tmp_path / "tensorboard").exists()


def test_asking_for_tensorboard_without_the_package_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"tensorboard.*fedlabel\[tensorboard\]"):
        config_from_dict({"tensorboard": True})
