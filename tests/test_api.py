"""fedlabel.run takes overrides, a composed dict or a Config, and runs the same simulation."""

from __future__ import annotations

import re

import pytest

import fedlabel
from fedlabel.config import config_from_dict
from fedlabel.errors import ConfigError

SMOKE = [
    "experiment=smoke",
    "engine=inprocess",
    "device=cpu",
    "rounds=1",
    "tensorboard=false",
    "algorithm=fedavg",
    "algorithm.local_steps=2",
]


def _metrics(summary: dict) -> list:
    return [(r["round"], r["accuracy"], r["loss"]) for r in summary["rounds"]]


def test_overrides_dict_and_config_give_the_same_run(tmp_path):
    by_overrides = fedlabel.run([*SMOKE, f"output_dir={tmp_path / 'a'}"], progress=False)
    values = fedlabel.compose([*SMOKE, f"output_dir={tmp_path / 'b'}"])
    by_dict = fedlabel.run(values, progress=False)
    values["output_dir"] = str(tmp_path / "c")
    by_config = fedlabel.run(config_from_dict(values), progress=False)
    assert by_overrides["status"] == "completed" and by_overrides["rounds"][0]["loss"] > 0
    assert _metrics(by_overrides) == _metrics(by_dict) == _metrics(by_config)
    assert by_config["config"]["output_dir"] == str(tmp_path / "c")


def test_compose_names_a_timestamped_output_dir_and_refuses_unknown_keys():
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", fedlabel.compose()["output_dir"])
    with pytest.raises(ConfigError, match="unknown config key data.num_clientz"):
        fedlabel.compose(["data.num_clientz=3"])
    with pytest.raises(TypeError, match="list of overrides"):
        fedlabel.run("experiment=smoke")
