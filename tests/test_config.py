"""The typed schema: validation names the field, Hydra composes every group, Flower's
run_config in pyproject.toml matches the schema, and the CLI stops before any work."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedlabel.algorithms import ALGORITHMS
from fedlabel.api import register_configs
from fedlabel.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_from_run_config,
    config_to_dict,
    default_run_config,
    flatten,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "values,field",
    [
        ({"data": {"label_ratio": 0.0}}, "data.label_ratio"),
        ({"data": {"label_ratio": 1.01}}, "data.label_ratio"),
        ({"data": {"alpha": 0.0}}, "data.alpha"),
        ({"data": {"alpha": -1.0}}, "data.alpha"),
        ({"clients_per_round": 11, "data": {"num_clients": 10}}, "clients_per_round"),
        ({"algorithm": {"name": "fedsomething"}}, "algorithm.name"),
        ({"engine": {"name": "spark"}}, "engine.name"),
        ({"data": {"partition": "pathological"}}, "data.partition"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": "ten"}, "rounds"),
        ({"data": {"num_clients": 2.5}}, "data.num_clients"),
        ({"data": {"colour": "red"}}, "data.colour"),
        ({"algorithm": {"name": "fedavg", "beta": 0.5}}, "algorithm.beta"),
        ({"device": "tpu"}, "device"),
        ({"aggregation": {"robust": "bulyan"}}, "aggregation.robust"),
        ({"aggregation": {"clip_to_median": -1.0}}, "aggregation.clip_to_median"),
        ({"aggregation": {"weight_to_median": -1.0}}, "aggregation.weight_to_median"),
        (
            {"aggregation": {"robust": "trimmed_mean", "trim_fraction": 0.5}},
            "aggregation.trim_fraction",
        ),
        (
            {"aggregation": {"robust": "trimmed_mean", "trim_fraction": 0.05}},
            "aggregation.trim_fraction",
        ),  # trims none of 10
        (
            {"aggregation": {"robust": "krum", "krum_malicious": 4}},
            "aggregation.krum_malicious",
        ),  # 10 <= 2 x 4 + 2
        ({"aggregation": {"robust": "krum", "krum_select": 0}}, "aggregation.krum_select"),
        (
            {
                "aggregation": {"robust": "median"},
                "algorithm": {"name": "fedlabel", "aggregation": "split"},
            },
            "aggregation.robust",
        ),
        ({"faults": {"attack": "sybil"}}, "faults.attack"),
        ({"faults": {"attack": "scale"}, "engine": {"name": "flower"}}, "faults.attack"),
        (
            {"faults": {"attack": "scale", "attack_client": 100}, "engine": {"name": "inprocess"}},
            "faults.attack_client",
        ),
        (
            {"faults": {"attack": "scale", "attack_scale": 0.0}, "engine": {"name": "inprocess"}},
            "faults.attack_scale",
        ),
        (
            {"faults": {"attack": "norm", "max_update_norm": 0.0}, "engine": {"name": "inprocess"}},
            "faults.attack",
        ),
        ({"stop": {"patience": -1}}, "stop.patience"),
        ({"stop": {"target_accuracy": 1.5}}, "stop.target_accuracy"),
        ({"stop": {"target_accuracy": -0.1}}, "stop.target_accuracy"),
        ({"stop": {"min_delta": 0.1}}, "stop.min_delta"),
        ({"mlflow": {"experiment": ""}}, "mlflow.experiment"),
    ],
)
def test_impossible_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_dict(values)


def test_stop_and_mlflow_errors_are_one_line(monkeypatch):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stop": {"patience": -2}})
    assert "\n" not in str(err.value) and "got -2" in str(err.value)
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "mlflow" else object()
    )
    with pytest.raises(
        ConfigError, match=r"mlflow\.enabled.*pip install 'fedlabel\[mlflow\]'"
    ) as err:
        config_from_dict({"mlflow": {"enabled": True}})
    assert "\n" not in str(err.value)


def test_hydra_composes_the_aggregation_settings():
    register_configs()
    with initialize_config_module(config_module="fedlabel._configs", version_base="1.3"):
        hcfg = compose(
            config_name="config",
            overrides=[
                "aggregation.robust=median",
                "aggregation.clip_to_median=2.5",
                "output_dir=x",
            ],
        )
    cfg = config_from_dict(OmegaConf.to_container(hcfg, resolve=True))
    assert cfg.aggregation.robust == "median" and cfg.aggregation.clip_to_median == 2.5
    assert Config().aggregation.clip_to_median == 3.0 and Config().aggregation.robust == "none"


def test_label_ratio_one_is_allowed():
    assert config_from_dict({"data": {"label_ratio": 1.0}}).data.label_ratio == 1.0


def test_run_config_round_trip():
    cfg = config_from_dict(
        {
            "algorithm": {"name": "fedavg", "lr": 0.1},
            "data": {"num_clients": 7},
            "clients_per_round": 3,
        }
    )
    assert config_from_run_config(flatten(config_to_dict(cfg))) == cfg


def test_run_config_drops_other_algorithms_keys():
    flat = default_run_config()
    flat["algorithm.name"] = "fedavg"
    assert config_from_run_config(flat).algorithm == ALGORITHMS["fedavg"].params()


def test_pyproject_flower_config_matches_schema():
    """`fedlabel flower-config` regenerates the section; Flower rejects keys not listed there."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert flatten(pyproject["tool"]["flwr"]["app"]["config"]) == default_run_config()


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("data", ["fashion_mnist", "npz"])
@pytest.mark.parametrize("model", ["cnn", "resnet18"])
@pytest.mark.parametrize("engine", ["flower", "inprocess"])
def test_hydra_composes_every_group(algorithm, data, model, engine):
    register_configs()
    overrides = [
        f"algorithm={algorithm}",
        f"data={data}",
        f"model={model}",
        f"engine={engine}",
        "output_dir=/tmp/x",
    ]
    if data == "npz":
        overrides.append("data.root=/tmp/organamnist.npz")
    with initialize_config_module(config_module="fedlabel._configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    values = OmegaConf.to_container(cfg, resolve=True)
    built = config_from_dict(values)
    assert (built.algorithm.name, built.data.name, built.model.name, built.engine.name) == (
        algorithm,
        data,
        model,
        engine,
    )
    assert built.rounds == Config().rounds


def test_experiment_files_compose():
    register_configs()
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        with initialize_config_module(config_module="fedlabel._configs", version_base="1.3"):
            cfg = compose(
                config_name="config", overrides=[f"experiment={path.stem}", "output_dir=/tmp/x"]
            )
        config_from_dict(OmegaConf.to_container(cfg, resolve=True))


def test_cli_rejects_bad_value_before_any_work(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedlabel.cli",
            "simulate",
            "data.label_ratio=1.5",
            f"output_dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "data.label_ratio" in proc.stderr
    assert not (out / "summary.json").exists() and not (out / "clients.json").exists()
