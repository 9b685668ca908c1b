"""Algorithm names as presets of six core algorithms: every registered name keeps its Params,
a preset's fixed keys cannot be changed, and Flower's run_config carries only the chosen
algorithm's keys (under its name), so `flwr run` of a preset needs nothing but its name."""

import dataclasses
import tomllib

import pytest

from fedlabel.algorithms import ALGORITHMS, AlgorithmParams, build_algorithm
from fedlabel.algorithms.fedavg import FedAvg
from fedlabel.algorithms.fedlabel import FedLabel
from fedlabel.algorithms.fedmatch import FedMatch
from fedlabel.algorithms.fedtrinet import FedTriNet
from fedlabel.algorithms.fixmatch import FixMatch
from fedlabel.algorithms.uda import Uda
from fedlabel.config import (
    COMMON_KEYS,
    ConfigError,
    config_from_dict,
    config_from_run_config,
    config_to_dict,
    default_run_config,
    to_run_config,
)
from fedlabel.deploy import run_config_file

SUPERVISED = dict(
    lr=0.05, momentum=0.0, weight_decay=0.0, batch_size=32, local_steps=10, weak_shift=2
)
STRONG = dict(strong_num_ops=1, strong_magnitude=10, strong_cutout=10)
SEMI = dict(lambda_u=1.0, unlabeled_ratio=1, **STRONG)
FEDLABEL = dict(
    unlabeled_steps=10,
    beta=0.5,
    lambda0=1.0,
    confidence="variance",
    kl_direction="teacher_student",
    kl_input="strong",
    unlabeled_sampling="all",
    delta_combination="sum",
    aggregation="weighted",
    **STRONG,
)
FEDMATCH = dict(
    unlabeled_batch_size=32,
    num_helpers=2,
    helper_interval=10,
    helper_payload="psi",
    embedding_inputs=1,
    confidence_threshold=0.75,
    agreement="plurality",
    lambda_s=1.0,
    lambda_i=1e-3,
    lambda_a=1e-3,
    lambda_l1=2e-6,
    lambda_l2=0.2,
    psi_factor=0.2,
    l1_thres=5e-6,
    **STRONG,
)
FEDTRINET = dict(
    warmup_rounds=10,
    tri_threshold=0.9,
    initial_budget=0.1,
    unlabeled_batch_size=32,
    unlabeled_weight=1.0,
    evaluation="ensemble",
    **STRONG,
)
# Params() of each name's class before the presets (commit 0bb8e70), minus name and SUPERVISED
BEFORE = {
    "fedavg": {},
    "fedlabel": {**FEDLABEL, "expert": "both"},
    "fedprox": {"mu": 0.01},
    "fedavg_fixmatch": {**SEMI, "threshold": 0.95},
    "fedprox_fixmatch": {**SEMI, "threshold": 0.95, "mu": 0.01},
    "fedavg_uda": {**SEMI, "temperature": 0.4, "mask_threshold": 0.8},
    "fedprox_uda": {**SEMI, "temperature": 0.4, "mask_threshold": 0.8, "mu": 0.01},
    "fedlabel_local_only": {**FEDLABEL, "expert": "local"},
    "fedlabel_global_only": {**FEDLABEL, "expert": "global"},
    "fedmatch": FEDMATCH,
    "fedtrinet": FEDTRINET,
}
# the keys the names gained since: FedProx's mu (FedAvg-based names) and the strong magnitude's
# scale (names with a strong view), at defaults that run exactly what ran before; FedTriNet
# Tri-net's output smearing and label editing (a repair: its numbers change)
GAINED = {
    name: {
        **({"mu": 0.0} if name in ("fedavg", "fedavg_fixmatch", "fedavg_uda") else {}),
        **({"strong_magnitude_scale": 30} if "strong_magnitude" in before else {}),
        **(
            {"smear_std": 0.01, "edit_passes": 9, "edit_dropout": 0.5}
            if name == "fedtrinet"
            else {}
        ),
    }
    for name, before in BEFORE.items()
}
CORE = {
    "fedavg": FedAvg,
    "fedprox": FedAvg,
    "fedavg_fixmatch": FixMatch,
    "fedprox_fixmatch": FixMatch,
    "fedavg_uda": Uda,
    "fedprox_uda": Uda,
    "fedlabel": FedLabel,
    "fedlabel_local_only": FedLabel,
    "fedlabel_global_only": FedLabel,
    "fedmatch": FedMatch,
    "fedtrinet": FedTriNet,
}


def test_the_registered_names_are_kept():
    assert list(ALGORITHMS) == [
        "fedavg",
        "fedlabel",
        "fedprox",
        "fedavg_fixmatch",
        "fedprox_fixmatch",
        "fedavg_uda",
        "fedprox_uda",
        "fedlabel_local_only",
        "fedlabel_global_only",
        "fedlabel_paper",
        "fedmatch",
        "fedtrinet",
    ]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_name_has_the_params_it_had(name):
    want = {"name": name, **SUPERVISED, **BEFORE[name], **GAINED.get(name, {})}
    assert dataclasses.asdict(ALGORITHMS[name].params()) == want
    cfg = config_from_dict({"algorithm": {"name": name}})
    assert dataclasses.asdict(cfg.algorithm) == want
    assert type(build_algorithm(cfg.algorithm)) is CORE[name]
    assert (
        config_from_dict(config_to_dict(cfg)) == cfg
    )  # summary.json's config reads back (fixed keys too)


def test_fedlabel_paper_is_fedlabel_with_the_equations_settings():
    """fedlabel_paper: the student on the clean x and first in the KL, RandAugment on Cubuk
    et al.'s scale; every other value is FedLabel's default, and stays open."""
    paper = {"kl_input": "clean", "kl_direction": "student_teacher", "strong_magnitude_scale": 10}
    want = {**dataclasses.asdict(ALGORITHMS["fedlabel"].params()), **paper}
    cfg = config_from_dict({"algorithm": {"name": "fedlabel_paper"}})
    assert dataclasses.asdict(cfg.algorithm) == {**want, "name": "fedlabel_paper"}
    assert type(build_algorithm(cfg.algorithm)) is FedLabel
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert not set(paper) & set(ALGORITHMS["fedlabel_paper"].keys())
    tuned = config_from_dict(
        {"algorithm": {"name": "fedlabel_paper", "beta": 0.3, "strong_magnitude": 7}}
    ).algorithm
    assert (tuned.beta, tuned.strong_magnitude, tuned.strong_magnitude_scale) == (0.3, 7, 10)
    with pytest.raises(ConfigError, match=r"algorithm\.strong_magnitude: must be in \[0, 10\]"):
        config_from_dict({"algorithm": {"name": "fedlabel_paper", "strong_magnitude": 11}})


def test_presets_set_their_defaults_and_leave_them_open():
    cfg = config_from_dict({"algorithm": {"name": "fedprox", "mu": 0.5, "lr": 0.1}})
    assert (cfg.algorithm.name, cfg.algorithm.mu, cfg.algorithm.lr) == ("fedprox", 0.5, 0.1)
    prox0 = ALGORITHMS["fedprox_uda"].params(mu=0.0)
    assert dataclasses.replace(prox0, name="fedavg_uda") == ALGORITHMS["fedavg_uda"].params()


@pytest.mark.parametrize(
    "name,key,value,fixed",
    [
        ("fedlabel_local_only", "expert", "both", "local"),
        ("fedlabel_global_only", "expert", "local", "global"),
        ("fedlabel_paper", "kl_input", "strong", "clean"),
        ("fedlabel_paper", "kl_direction", "teacher_student", "student_teacher"),
        ("fedlabel_paper", "strong_magnitude_scale", 30, 10),
    ],
)
def test_overriding_a_fixed_key_is_refused_naming_it(name, key, value, fixed):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"algorithm": {"name": name, key: value}})
    message = str(err.value)
    assert message.startswith(f"algorithm.{key}: ") and name in message and repr(fixed) in message
    assert "algorithm=fedlabel" in message and "\n" not in message
    with pytest.raises(ConfigError, match=rf"algorithm\.{key}"):
        ALGORITHMS[name].params(**{key: value})
    assert (
        getattr(config_from_dict({"algorithm": {"name": name, key: fixed}}).algorithm, key) == fixed
    )


def test_presets_share_the_common_defaults():
    """The COMMON_KEYS sit once in run_config (algorithm.lr, ...): no name may change their
    defaults."""
    base = AlgorithmParams()
    for preset in ALGORITHMS.values():
        assert {k: getattr(preset.params(), k) for k in COMMON_KEYS} == {
            k: getattr(base, k) for k in COMMON_KEYS
        }


def _algorithm_keys(flat: dict) -> set[str]:
    return {k for k in flat if k.startswith("algorithm.")}


def test_run_config_of_a_preset_holds_only_its_keys():
    common = {f"algorithm.{k}" for k in SUPERVISED} | {"algorithm.name"}
    flat = to_run_config(config_from_dict({"algorithm": {"name": "fedlabel_local_only"}}))
    assert _algorithm_keys(flat) == common | {
        f"algorithm.fedlabel_local_only.{k}" for k in [*FEDLABEL, "strong_magnitude_scale"]
    }
    assert flat["algorithm.name"] == "fedlabel_local_only" and not any("expert" in k for k in flat)
    flat = to_run_config(config_from_dict({"algorithm": {"name": "fedprox"}}))
    assert (
        _algorithm_keys(flat) == common | {"algorithm.fedprox.mu"}
        and flat["algorithm.fedprox.mu"] == 0.01
    )
    others = to_run_config(config_from_dict({}))
    assert set(flat) - _algorithm_keys(flat) == set(others) - _algorithm_keys(others)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_flwr_run_with_only_the_name_runs_that_preset(name):
    """`flwr run . --run-config algorithm.name='"<name>"'`: Flower fuses the name into
    pyproject's defaults (default_run_config); the apps read the name's own section."""
    flat = {**default_run_config(), "algorithm.name": name}
    assert config_from_run_config(flat).algorithm == ALGORITHMS[name].params()
    cfg = config_from_dict({"algorithm": {"name": name, "lr": 0.2}, "rounds": 3})
    assert set(to_run_config(cfg)) <= set(default_run_config())  # Flower accepts every key
    assert config_from_run_config({**default_run_config(), **to_run_config(cfg)}) == cfg


def test_other_names_sections_do_not_leak():
    flat = {
        **default_run_config(),
        "algorithm.name": "fedlabel_local_only",
        "algorithm.fedlabel.beta": 0.9,
        "algorithm.fedlabel.expert": "global",
        "algorithm.fedlabel_local_only.beta": 0.3,
    }
    p = config_from_run_config(flat).algorithm
    assert (p.beta, p.expert) == (0.3, "local")


def test_deploy_submit_writes_only_the_presets_keys(tmp_path):
    path = tmp_path / "run.toml"
    run_config_file(
        sites=2,
        output_dir="/out",
        path=path,
        overrides=[
            "clients_per_round=2",
            "algorithm.name=fedlabel_local_only",
            "algorithm.beta=0.3",
        ],
    )
    written = tomllib.loads(path.read_text())["algorithm"]
    assert (
        written["name"] == "fedlabel_local_only" and written["fedlabel_local_only"]["beta"] == 0.3
    )
    assert (
        set(written) == {"name", *SUPERVISED, "fedlabel_local_only"}
        and "expert" not in written["fedlabel_local_only"]
    )
    with pytest.raises(ConfigError, match=r"algorithm\.expert"):
        run_config_file(
            sites=2,
            output_dir="/out",
            path=path,
            overrides=[
                "clients_per_round=2",
                "algorithm.name=fedlabel_local_only",
                "algorithm.expert=both",
            ],
        )
