"""DP-SGD: Opacus per-sample gradients, clipping, Poisson batches, wrapped keys, and the epsilon
every client update reports, checked against Opacus's own accountant."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.config import Config, PrivacyConfig
from fedlabel.privacy import dpsgd
from fedlabel.privacy.dpsgd import DpSgd, DpSgdSettings
from fedlabel.privacy.mechanism import ServerPrivacy, private_client_update
from fedlabel.training import ClientContext, SgdConfig, forward
from tests.helpers import tiny_client, tiny_model


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 4, torch.randint(0, 3, (n,), generator=g)


def _one_dp_step(
    model,
    params,
    x,
    y,
    *,
    clip: float,
    batch_size: int,
    two_views: bool = False,
    mode: str = DpSgdSettings.grad_sample_mode,
):
    """One DP-SGD step with zero noise and lr 1 on all n records (q = 1 when batch_size >= n)."""

    def loss_fn(f, idx):
        if (
            two_views
        ):  # rows [x; flipped x]: two views of the same records, as FedLabel's kl_input=clean
            logits = f(torch.cat([x[idx], x[idx].flip(-1)]))
            return (
                F.cross_entropy(logits[: len(idx)], y[idx], reduction="none")
                + F.cross_entropy(logits[len(idx) :], y[idx], reduction="none")
            ).mean()
        return F.cross_entropy(f(x[idx]), y[idx])

    trainer = DpSgd(
        DpSgdSettings(noise_multiplier=0.0, max_grad_norm=clip, grad_sample_mode=mode),
        torch.Generator().manual_seed(0),
    )
    ctx = ClientContext(torch.device("cpu"), torch.Generator().manual_seed(1), trainer)
    batches = ctx.batches(len(x), batch_size=batch_size, steps=1)
    new, _ = ctx.train(model, params, batches=batches, loss_fn=loss_fn, sgd=SgdConfig(lr=1.0))
    return {k: params[k] - new[k] for k in params}, batches[0]  # the applied gradient


def _reference(model, params, x, y, *, clip: float, expected: float, two_views: bool = False):
    """Slow reference: each record's gradient by its own autograd call, clipped, summed, / q n."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(len(x)):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        xi = x[i : i + 1]
        loss = F.cross_entropy(forward(model, p, xi), y[i : i + 1])
        if two_views:
            loss = loss + F.cross_entropy(forward(model, p, xi.flip(-1)), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(p.values()))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        scale = min(1.0, clip / (float(norm) + 1e-6))
        for k, g in zip(p, grads):
            total[k] += g * scale
    return {k: v / expected for k, v in total.items()}


@pytest.mark.parametrize("two_views", [False, True])
@pytest.mark.parametrize("clip", [0.05, 100.0])
def test_per_sample_gradients_clipped_equal_slow_reference(clip, two_views):
    model, params = tiny_model()
    x, y = _data(6)
    applied, batch = _one_dp_step(model, params, x, y, clip=clip, batch_size=6, two_views=two_views)
    assert len(batch) == 6  # q = 1: every record in the batch
    ref = _reference(model, params, x, y, clip=clip, expected=6.0, two_views=two_views)
    for k in params:
        torch.testing.assert_close(applied[k], ref[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("two_views", [False, True])
@pytest.mark.parametrize("mode", [m for m in dpsgd.GRAD_SAMPLE_MODES if m != "hooks"])
def test_every_grad_sample_mode_gives_the_clipped_sum_of_opacus_hooks(mode, two_views, activation):
    """The default CNN (each model.activation) on tiny images, a clip norm between the records'
    gradient norms (some records clipped, some not): the applied gradient of each mode equals
    Opacus's default hooks mode's to float tolerance."""
    model, params = tiny_model(activation=activation)
    x, y = _data(8)
    x[:3] *= 30.0  # records with larger gradients
    norms = []
    for i in range(len(x)):  # each record's unclipped gradient norm (q n = 1, no clipping)
        one = _reference(
            model, params, x[i : i + 1], y[i : i + 1], clip=1e9, expected=1.0, two_views=two_views
        )
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in one.values()))))
    clip = float(torch.tensor(norms).median())
    assert min(norms) < clip < max(norms)  # some records clipped, some not
    hooks, _ = _one_dp_step(
        model, params, x, y, clip=clip, batch_size=8, two_views=two_views, mode="hooks"
    )
    other, _ = _one_dp_step(
        model, params, x, y, clip=clip, batch_size=8, two_views=two_views, mode=mode
    )
    for k in params:
        torch.testing.assert_close(other[k], hooks[k], rtol=1e-4, atol=1e-6)
        assert not torch.equal(hooks[k], torch.zeros_like(hooks[k]))


def test_one_record_moves_the_step_by_at_most_clip_over_expected_batch():
    """The contribution of any single record to a step is bounded by C / (q n), however large
    its gradient: compare the step with and without it (zero noise)."""
    model, params = tiny_model()
    x, y = _data(6)
    x[0] *= 1000.0  # an outlier with a huge gradient
    clip = 0.1
    with_it, _ = _one_dp_step(model, params, x, y, clip=clip, batch_size=6)
    without, _ = _one_dp_step(model, params, x[1:], y[1:], clip=clip, batch_size=6)
    # same divisor q n = 6 in both (q = 1 vs 6/5 capped at 1: rescale the second)
    diff = torch.sqrt(sum(((with_it[k] * 6 - without[k] * 5) ** 2).sum() for k in params))
    assert float(diff) <= clip * 1.0001
    assert float(diff) > clip * 0.99  # the outlier's gradient was really clipped to C, not dropped


def test_empty_poisson_batch_takes_noise_only_step_without_calling_the_loss():
    model, params = tiny_model()
    x, y = _data(5)
    calls = []

    def loss_fn(f, idx):
        assert len(idx) > 0, "the loss must never see an empty batch"
        calls.append(len(idx))
        return F.cross_entropy(f(x[idx]), y[idx])

    s = DpSgd(
        DpSgdSettings(noise_multiplier=0.0, max_grad_norm=1.0), torch.Generator().manual_seed(0)
    )
    ctx = ClientContext(torch.device("cpu"), torch.Generator().manual_seed(3), s)
    batches = ctx.batches(5, batch_size=1, steps=20)
    ctx.train(model, params, batches=batches, loss_fn=loss_fn, sgd=SgdConfig(lr=0.1))
    empty = sum(len(b) == 0 for b in batches)
    assert empty > 0 and len(calls) == 20 - empty
    assert s.ledger == [(0.0, 0.2, 20)]  # every step, empty or not, is counted at q = 1/5
    # with zero noise, a run of only empty batches leaves the parameters unchanged
    s = DpSgd(DpSgdSettings(noise_multiplier=0.0, max_grad_norm=1.0), torch.Generator())
    s.last_draw = (0.5, 4, 2)
    empty2 = [torch.tensor([], dtype=torch.long)] * 2
    new, _ = s.train(model, params, batches=empty2, loss_fn=loss_fn, sgd=SgdConfig(lr=0.1))
    assert all(torch.equal(new[k], params[k]) for k in params)


def test_poisson_batches_have_the_sampling_rate():
    batches = dpsgd.poisson_batches(
        200, batch_size=20, steps=500, generator=torch.Generator().manual_seed(0)
    )
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float)
    assert abs(float(sizes.mean()) - 20.0) < 0.5  # q n = 20; std of the mean ~0.19
    assert all(len(set(b.tolist())) == len(b) for b in batches)


def test_opacus_wrapped_keys_handled_at_the_boundary():
    model, params = tiny_model()
    gsm = dpsgd.grad_sample_module(model, torch.device("cpu"))
    assert all(k.startswith("_module.") for k in gsm.state_dict())
    gsm.load_state_dict(dpsgd.to_wrapped(params))
    assert dpsgd.from_wrapped(gsm.state_dict()).keys() == params.keys()
    with pytest.raises(KeyError, match="body.0.weight"):
        dpsgd.from_wrapped({"body.0.weight": torch.zeros(1)})
    assert not any(
        hasattr(m, "activations") or m._forward_hooks for m in model.modules()
    )  # skeleton untouched


def _private_round(name, privacy, client, rnd):
    params = ALGORITHMS[name].params(local_steps=3, batch_size=4, weak_shift=0)
    if name == "fedlabel":
        params = dataclasses.replace(params, unlabeled_steps=2, beta=0.0)
    model, w = tiny_model()
    g = torch.Generator().manual_seed(rnd)
    return private_client_update(
        build_algorithm(params), privacy, model, w, client, generator=g, device=torch.device("cpu")
    )


def test_reported_epsilon_equals_opacus_accountant():
    """FedLabel: both branches are private; two rounds of one client compose 2 x (3 labeled steps
    at q = 4/10 + 2 unlabeled steps at q = 4/25), recomputed here step by step with Opacus."""
    privacy = PrivacyConfig(name="dpsgd", noise_multiplier=0.8, max_grad_norm=1.0, delta=1e-5)
    server = ServerPrivacy(Config(privacy=privacy))
    client = tiny_client(num_labeled=10, num_unlabeled=25)
    for rnd in (1, 2):
        update = _private_round("fedlabel", privacy, client, rnd)
        assert update.metrics["num_kept"] > 0  # beta = 0: the unlabeled branch ran
        reported = server.account([update])
    reference = RDPAccountant()
    for _ in range(2):
        for _ in range(3):
            reference.step(noise_multiplier=0.8, sample_rate=0.4)
        for _ in range(2):
            reference.step(noise_multiplier=0.8, sample_rate=4 / 25)
    assert reported == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert server.summary()["client_epsilon"] == {"0": reported}


def test_dpsgd_changes_training_and_no_privacy_leaves_it_alone():
    client = tiny_client(num_labeled=10, num_unlabeled=0)
    plain = _private_round("fedavg", PrivacyConfig(), client, 1)
    again = _private_round("fedavg", PrivacyConfig(), client, 1)
    private = _private_round("fedavg", PrivacyConfig(name="dpsgd"), client, 1)
    assert all(
        torch.equal(plain.deltas["model"][k], again.deltas["model"][k])
        for k in plain.deltas["model"]
    )
    assert not any(
        torch.equal(plain.deltas["model"][k], private.deltas["model"][k])
        for k in plain.deltas["model"]
    )
    assert "dp-steps" not in plain.metrics and private.metrics["dp-steps"] == [3]


def test_ledger_metrics_travel_in_a_flower_metric_record():
    from flwr.app import MetricRecord

    update = _private_round(
        "fedlabel", PrivacyConfig(name="dpsgd"), tiny_client(num_labeled=10, num_unlabeled=25), 1
    )
    decoded = dict(MetricRecord(dict(update.metrics)))
    assert decoded == update.metrics and decoded["dp-steps"] == [3, 2]


def test_fedprox_proximal_gradient_is_added_after_the_noise():
    """FedProx under DP-SGD: the proximal term pulls towards the global model, so with a huge mu
    (and the same seed, hence the same batches and noise) the update shrinks."""
    client = tiny_client(num_labeled=10, num_unlabeled=0)
    privacy = PrivacyConfig(name="dpsgd", noise_multiplier=0.5)
    plain = _private_round("fedavg", privacy, client, 1)
    model, w = tiny_model()
    params = ALGORITHMS["fedprox"].params(local_steps=3, batch_size=4, weak_shift=0, mu=10.0)
    prox = private_client_update(
        build_algorithm(params),
        privacy,
        model,
        w,
        client,
        generator=torch.Generator().manual_seed(1),
        device=torch.device("cpu"),
    )
    norm = lambda d: float(torch.sqrt(sum((v**2).sum() for v in d.values())))  # noqa: E731
    assert prox.metrics["dp-steps"] == [3]
    assert norm(prox.deltas["model"]) < norm(plain.deltas["model"])


def test_server_privacy_state_survives_a_checkpoint():
    privacy = PrivacyConfig(name="dpsgd", noise_multiplier=0.8)
    server = ServerPrivacy(Config(privacy=privacy))
    assert server.account([]) == 0.0  # DP on, nothing trained yet: epsilon 0, not null
    update = _private_round("fedavg", privacy, tiny_client(num_labeled=10, num_unlabeled=0), 1)
    first = server.account([update])
    restored = ServerPrivacy(Config(privacy=privacy))
    restored.load_state_dict(server.state_dict())
    assert restored.summary() == server.summary()
    assert restored.account([update]) == server.account([update]) > first


def test_bookkeeping_takes_several_model_calls_per_loss():
    """Two calls f(x), f(flipped x) in one loss give the clipped sum of one call on both views."""
    model, params = tiny_model()
    x, y = _data(6)
    clip = 0.05
    one_call, _ = _one_dp_step(model, params, x, y, clip=clip, batch_size=6, two_views=True)

    def loss_fn(f, idx):
        return (
            F.cross_entropy(f(x[idx]), y[idx], reduction="none")
            + F.cross_entropy(f(x[idx].flip(-1)), y[idx], reduction="none")
        ).mean()

    trainer = DpSgd(DpSgdSettings(0.0, clip, grad_sample_mode="bk"), torch.Generator())
    batches = trainer.batches(6, batch_size=6, steps=1, generator=torch.Generator())
    new, _ = trainer.train(model, params, batches=batches, loss_fn=loss_fn, sgd=SgdConfig(lr=1.0))
    for k in params:
        torch.testing.assert_close(params[k] - new[k], one_call[k], rtol=1e-4, atol=1e-6)


def test_bookkeeping_refuses_layers_it_does_not_cover():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3), torch.nn.LayerNorm(3))
    with pytest.raises(ValueError, match="LayerNorm.*grad_sample_mode=ew"):
        dpsgd.grad_sample_module(model, torch.device("cpu"), "bk")
