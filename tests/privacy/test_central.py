"""Client-level central DP: clipping and noise as Flower's fixed-clipping mechanism defines
them (checked against Flower's own helpers), and its accounting."""

import numpy as np
import pytest
import torch
from flwr.supercore.differential_privacy import clip_inputs_inplace, compute_stdv, get_norm
from opacus.accountants import RDPAccountant

from fedlabel.algorithms import ClientUpdate
from fedlabel.config import Config, DataConfig, PrivacyConfig
from fedlabel.privacy import central
from fedlabel.privacy.mechanism import ServerPrivacy


def _delta(seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(30, 20, generator=g) * scale,
        "b": torch.randn(20, generator=g) * scale,
    }


@pytest.mark.parametrize("scale", [0.001, 1.0, 50.0])
def test_clip_update_equals_flowers_clip(scale):
    delta = _delta(0, scale)
    ours = central.clip_update(delta, 2.0)
    theirs = [v.numpy().copy() for v in delta.values()]
    clip_inputs_inplace(theirs, 2.0)
    for ours_v, theirs_v in zip(ours.values(), theirs):
        np.testing.assert_allclose(ours_v.numpy(), theirs_v, rtol=1e-6)
    assert central.update_norm(ours) <= 2.0 * (1 + 1e-6)
    assert central.update_norm(delta) == pytest.approx(
        get_norm([v.numpy() for v in delta.values()]), rel=1e-6
    )


def test_noise_std_equals_flowers_compute_stdv():
    assert central.noise_std(1.3, 0.7, 9) == pytest.approx(compute_stdv(1.3, 0.7, 9))


def test_private_aggregate_clips_each_update_and_adds_noise_of_std_zC_over_n():
    zeros = {"w": torch.zeros(300, 200), "b": torch.zeros(200)}
    deltas = [(k, _delta(k, 10.0)) for k in range(4)]  # norms ~ 10 sqrt(6020) >> C
    clip, z, n = 0.5, 2.0, 5  # n sampled, 4 answered: divisor stays n, as in Flower
    tiny = {k: torch.zeros_like(v) for k, v in deltas[0][1].items()}
    # without noise (z -> 0) the result is the mean of the clipped updates over the n sampled
    exact = central.private_aggregate(
        tiny,
        deltas,
        clipping_norm=clip,
        noise_multiplier=1e-12,
        num_sampled_clients=n,
        clip=True,
        generator=torch.Generator().manual_seed(0),
    )
    expected = {k: sum(central.clip_update(d, clip)[k] for _, d in deltas) / n for k in tiny}
    for k in tiny:
        torch.testing.assert_close(exact[k], expected[k])
    # noise alone: 60,200 coordinates, std z C / n = 0.2 (relative error of the estimate ~0.3%)
    noisy = central.private_aggregate(
        zeros,
        [],
        clipping_norm=clip,
        noise_multiplier=z,
        num_sampled_clients=n,
        clip=True,
        generator=torch.Generator().manual_seed(1),
    )
    flat = torch.cat([v.flatten() for v in noisy.values()])
    assert float(flat.std()) == pytest.approx(z * clip / n, rel=0.02)
    assert abs(float(flat.mean())) < 0.01


def test_client_side_clipping_is_checked_not_redone():
    big = _delta(0, 10.0)
    with pytest.raises(ValueError, match="client 3 sent an update of norm"):
        central.private_aggregate(
            {k: torch.zeros_like(v) for k, v in big.items()},
            [(3, big)],
            clipping_norm=1.0,
            noise_multiplier=1.0,
            num_sampled_clients=1,
            clip=False,
            generator=torch.Generator(),
        )


def test_central_epsilon_is_opacus_subsampled_gaussian_over_rounds():
    cfg = Config(
        privacy=PrivacyConfig(name="central_dp", noise_multiplier=1.1),
        data=DataConfig(num_clients=50),
        clients_per_round=5,
    )
    server = ServerPrivacy(cfg)
    update = ClientUpdate(client_id=0, deltas={"model": {}}, weight=1.0)
    eps = [server.account([update]) for _ in range(3)]
    reference = RDPAccountant()
    for r in range(3):
        reference.step(noise_multiplier=1.1, sample_rate=0.1)
        assert eps[r] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-12)
    assert eps[0] < eps[1] < eps[2]


def test_split_updates_are_refused():
    server = ServerPrivacy(Config(privacy=PrivacyConfig(name="central_dp")))
    u = ClientUpdate(client_id=7, deltas={"labeled": {}, "unlabeled": {}}, weight=1.0)
    with pytest.raises(ValueError, match="client 7 sent"):
        server.aggregate(None, {}, [u], round=1)


def test_no_privacy_reports_null_epsilon_and_uses_the_algorithms_aggregation():
    server = ServerPrivacy(Config())
    update = ClientUpdate(client_id=0, deltas={"model": {"w": torch.ones(2)}}, weight=3.0)

    class Algo:
        def aggregate(self, global_params, updates, *, combine):
            return {"w": global_params["w"] + 1}

    assert server.account([update]) is None and server.summary() is None
    assert torch.equal(
        server.aggregate(Algo(), {"w": torch.zeros(2)}, [update], round=1)["w"], torch.ones(2)
    )
