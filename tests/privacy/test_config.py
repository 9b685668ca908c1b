"""The privacy group: Hydra options, validation naming the field, run_config round trip."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedlabel.algorithms import ALGORITHMS
from fedlabel.api import register_configs
from fedlabel.config import (
    ConfigError,
    config_from_dict,
    config_from_run_config,
    config_to_dict,
    flatten,
)


@pytest.mark.parametrize(
    "values,field",
    [
        ({"privacy": {"name": "local_dp"}}, "privacy.name"),
        ({"privacy": {"name": "dpsgd", "noise_multiplier": 0.0}}, "privacy.noise_multiplier"),
        ({"privacy": {"name": "dpsgd", "max_grad_norm": -1.0}}, "privacy.max_grad_norm"),
        ({"privacy": {"name": "dpsgd", "delta": 0.0}}, "privacy.delta"),
        ({"privacy": {"name": "dpsgd", "delta": 1.0}}, "privacy.delta"),
        ({"privacy": {"name": "central_dp", "clipping": "both"}}, "privacy.clipping"),
        ({"privacy": {"name": "dpsgd", "accountant": "gdp"}}, "privacy.accountant"),
        ({"privacy": {"name": "dpsgd", "grad_sample_mode": "ghost"}}, "privacy.grad_sample_mode"),
        ({"privacy": {"name": "dpsgd", "epsilon": 1.0}}, "privacy.epsilon"),
        (
            {
                "privacy": {"name": "dpsgd"},
                "algorithm": {"name": "fedlabel", "unlabeled_sampling": "kept"},
            },
            "algorithm.unlabeled_sampling",
        ),
        (
            {
                "privacy": {"name": "central_dp"},
                "algorithm": {"name": "fedlabel", "aggregation": "split"},
            },
            "algorithm.aggregation",
        ),
        ({"privacy": {"name": "dpsgd"}, "algorithm": {"name": "fedavg_fixmatch"}}, "privacy.name"),
        ({"privacy": {"name": "dpsgd"}, "algorithm": {"name": "fedmatch"}}, "privacy.name"),
        (
            {
                "privacy": {"name": "dpsgd"},
                "algorithm": {"name": "fedavg"},
                "data": {"bag_size": 8},
            },
            "privacy.name",
        ),
        (
            {"privacy": {"name": "central_dp"}, "aggregation": {"robust": "median"}},
            "aggregation.robust",
        ),
        ({"privacy": {"secure_noise": "yes"}}, "privacy.secure_noise"),
    ],
)
def test_impossible_privacy_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_dict(values)


@pytest.mark.parametrize("name", ["none", "dpsgd", "central_dp"])
def test_hydra_privacy_group(name):
    register_configs()
    with initialize_config_module(config_module="fedlabel._configs", version_base="1.3"):
        hcfg = compose(
            config_name="config",
            overrides=[f"privacy={name}", "privacy.noise_multiplier=0.7", "output_dir=x"],
        )
    cfg = config_from_dict(OmegaConf.to_container(hcfg, resolve=True))
    assert cfg.privacy.name == name and cfg.privacy.noise_multiplier == 0.7
    assert config_from_run_config(flatten(config_to_dict(cfg))) == cfg


def test_fedmatch_with_central_dp_is_refused_naming_both_settings():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"algorithm": {"name": "fedmatch"}, "privacy": {"name": "central_dp"}})
    message = str(err.value)
    assert (
        "privacy.name" in message
        and "central_dp" in message
        and "algorithm.name=fedmatch" in message
    )
    assert "helper" in message and "\n" not in message


def test_only_fedmatch_conflicts_with_central_dp():
    accepted = [
        n
        for n in ALGORITHMS
        if n != "fedmatch"
        and config_from_dict(
            {"algorithm": {"name": n}, "privacy": {"name": "central_dp"}}
        ).privacy.name
        == "central_dp"
    ]
    assert sorted(accepted) == sorted(set(ALGORITHMS) - {"fedmatch"})
