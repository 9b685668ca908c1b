"""Where DP noise comes from (fedlabel.privacy.noise): seeded noise is reproducible from (seed,
round,
client), so whoever chose those can regenerate it; with privacy.secure_noise (always when deployed)
two releases from the same triple differ, DP-SGD's Poisson batches included."""

import dataclasses

import pytest
import torch

from fedlabel.algorithms import ALGORITHMS, ClientUpdate, build_algorithm
from fedlabel.config import Config, ConfigError, DataConfig, PrivacyConfig, config_from_dict
from fedlabel.data import build_federated, load_fashion_mnist
from fedlabel.data.bags import BagSpec
from fedlabel.federation import client_generator
from fedlabel.privacy import dpsgd, noise
from fedlabel.privacy.mechanism import ServerPrivacy, private_client_update
from fedlabel.training import ClientContext
from tests.helpers import tiny_client, tiny_model


def _dpsgd_update(secure: bool) -> dict[str, torch.Tensor]:
    """Client 3's DP-SGD update in round 2 of seed 0: the triple the server chose."""
    privacy = PrivacyConfig(name="dpsgd", secure_noise=secure)
    params = ALGORITHMS["fedavg"].params(local_steps=3, batch_size=4, weak_shift=0)
    model, w = tiny_model()
    update = private_client_update(
        build_algorithm(params),
        privacy,
        model,
        w,
        tiny_client(num_labeled=12, num_unlabeled=0),
        generator=client_generator(seed=0, round=2, client_id=3),
        device=torch.device("cpu"),
    )
    return update.deltas["model"]


def test_secure_dpsgd_updates_from_the_same_triple_differ_seeded_ones_match_bitwise():
    seeded = [_dpsgd_update(False) for _ in range(2)]
    assert all(torch.equal(seeded[0][k], seeded[1][k]) for k in seeded[0])
    secure = [_dpsgd_update(True) for _ in range(2)]
    assert not any(torch.equal(secure[0][k], secure[1][k]) for k in secure[0])


def test_secure_poisson_batches_do_not_come_from_the_clients_generator():
    settings = dpsgd.DpSgdSettings(noise_multiplier=1.0, max_grad_norm=1.0)
    draws = []
    for sampler in (None, None, noise.os_entropy_generator(), noise.os_entropy_generator()):
        trainer = dpsgd.DpSgd(settings, torch.Generator(), sampler)
        ctx = ClientContext(torch.device("cpu"), torch.Generator().manual_seed(7), trainer)
        batches = ctx.batches(200, batch_size=20, steps=5)
        draws.append([b.tolist() for b in batches])
    assert draws[0] == draws[1] and draws[2] != draws[0] and draws[3] != draws[2]


def _central_round(secure: bool) -> torch.Tensor:
    cfg = Config(privacy=PrivacyConfig(name="central_dp", secure_noise=secure))
    delta = ClientUpdate(client_id=0, deltas={"model": {"w": torch.ones(50)}}, weight=1.0)
    return ServerPrivacy(cfg).aggregate(None, {"w": torch.zeros(50)}, [delta], round=4)["w"]


def test_central_dp_noise_secure_differs_seeded_matches():
    assert torch.equal(_central_round(False), _central_round(False))
    assert not torch.equal(_central_round(True), _central_round(True))


def _bag_counts(secure: bool) -> torch.Tensor:
    try:
        dataset = load_fashion_mnist(download=False)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    bags = BagSpec(size=8, epsilon=1.0, secure_noise=secure)
    fed = build_federated(
        dataset,
        num_clients=2,
        partition="iid",
        alpha=1.0,
        min_client_size=1,
        label_ratio=0.5,
        labeled_class_alpha=0.0,
        seed=0,
        train_samples=200,
        bags=bags,
    )
    return fed.clients[0].bags.counts


def test_bag_count_noise_secure_differs_seeded_matches():
    assert torch.equal(_bag_counts(False), _bag_counts(False))
    secure = _bag_counts(True), _bag_counts(True)
    assert not torch.equal(*secure) and secure[0].shape == _bag_counts(False).shape


@pytest.mark.parametrize("secure,source", [(False, noise.SEEDED), (True, noise.OS_ENTROPY)])
def test_summary_records_the_noise_source(secure, source):
    for name in ("dpsgd", "central_dp"):
        assert (
            ServerPrivacy(Config(privacy=PrivacyConfig(name=name, secure_noise=secure))).summary()[
                "noise_source"
            ]
            == source
        )
    bags = Config(
        privacy=PrivacyConfig(secure_noise=secure),
        data=DataConfig(bag_size=8, proportion_epsilon=1.0),
    )
    assert ServerPrivacy(bags).summary() == {"mechanism": "none", "noise_source": source}
    assert (
        ServerPrivacy(Config(privacy=PrivacyConfig(secure_noise=secure))).summary() is None
    )  # no noise at all


def test_deployed_config_always_uses_os_entropy():
    cfg = Config(privacy=PrivacyConfig(name="dpsgd", noise_multiplier=0.7))
    site = noise.deployed(cfg)
    assert (
        site.privacy.secure_noise
        and dataclasses.replace(site.privacy, secure_noise=False) == cfg.privacy
    )


def test_secure_bag_noise_is_refused_where_workers_rebuild_the_bags():
    values = {
        "engine": {"name": "flower"},
        "algorithm": {"name": "fedavg"},
        "privacy": {"secure_noise": True},
        "data": {"bag_size": 8, "proportion_epsilon": 1.0},
    }
    with pytest.raises(ConfigError, match=r"privacy\.secure_noise.*engine=inprocess"):
        config_from_dict(values)
    assert config_from_dict({**values, "engine": {"name": "inprocess"}}).privacy.secure_noise
