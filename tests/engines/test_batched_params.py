"""Every setting of every batched algorithm is honoured by its batched version: for each field of
each batched algorithm's Params, one round of every client with that field changed, batched and
sequential, gives the same updates (up to the rounding of batched convolutions). A new setting
fails here until it has an entry in ALTERNATIVES, so none is silently ignored by
engine=vectorized."""

import dataclasses

import pytest
import torch

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.algorithms.batching import batched_version
from fedlabel.config import config_from_dict
from fedlabel.data import ClientData
from fedlabel.engines.vectorized import batched_trainer
from fedlabel.federation import client_generator, initial_model, load_federated
from fedlabel.training import ClientContext
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

# a value unlike the base's below, for every field (a new field needs one here)
ALTERNATIVES = {
    "lr": 0.1,
    "momentum": 0.5,
    "weight_decay": 1e-3,
    "batch_size": 48,
    "local_steps": 3,
    "weak_shift": 0,
    "mu": 0.5,
    "unlabeled_steps": 3,
    "beta": 0.3,
    "lambda0": 2.0,
    "confidence": "entropy",
    "expert": "local",
    "kl_direction": "student_teacher",
    "kl_input": "clean",
    "unlabeled_sampling": "kept",
    "delta_combination": "mean",
    "aggregation": "split",
    "strong_num_ops": 2,
    "strong_magnitude": 20,
    "strong_cutout": 0,
    "strong_magnitude_scale": 10,
}
BASE = {"local_steps": 2, "unlabeled_steps": 2}


def _cases() -> list[tuple[str, str]]:
    """(algorithm, field) once per batched version and field."""
    cases, seen = [], set()
    for name, preset in ALGORITHMS.items():
        version = batched_version(build_algorithm(preset.params()))
        if version is None:
            continue
        for key in preset.keys():
            if (version, key) not in seen:
                seen.add((version, key))
                cases.append((name, key))
    return cases


CASES = _cases()


def test_every_field_has_an_alternative():
    missing = sorted({field for _, field in CASES} - set(ALTERNATIVES))
    assert not missing, f"give these Params fields a value in ALTERNATIVES: {missing}"
    assert {a for a, _ in CASES} >= {"fedavg", "fedlabel"}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """4 clients (120 unlabeled samples each, for speed) and a global model trained 10 steps on
    client 0, so that some samples pass beta and both models are the expert for some (from the
    initial model neither holds)."""
    cfg = config_from_dict(tiny_config(tmp_path_factory.mktemp("batched")))
    model, params = initial_model(cfg, in_channels=1, num_classes=10, image_size=28)
    fed = load_federated(cfg)
    clients = [
        ClientData(
            c.client_id,
            c.labeled_images,
            c.labeled_labels,
            c.unlabeled_images[:120],
            c.unlabeled_true_labels[:120],
        )
        for c in fed.clients
    ]
    fed = dataclasses.replace(fed, clients=clients)
    ctx = ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0))
    warm = build_algorithm(ALGORITHMS["fedavg"].params(local_steps=10))
    delta = warm.client_update(model, params, fed.clients[0], ctx).deltas["model"]
    return fed, model, {k: v + delta[k] for k, v in params.items()}


_sequential_base: dict = {}


def _updates(federation, params, *, batched: bool):
    fed, model, global_params = federation
    algo = build_algorithm(params)
    ids = list(range(len(fed.clients)))
    gens = [client_generator(seed=0, round=1, client_id=c) for c in ids]
    if batched:
        return batched_trainer(model, algo, fed, torch.device("cpu")).train(
            fed.clients, global_params, gens
        )
    cpu = torch.device("cpu")
    return [
        algo.client_update(model, global_params, fed.clients[c], ClientContext(cpu, g))
        for c, g in zip(ids, gens)
    ]


def _flat(update) -> torch.Tensor:
    return torch.cat(
        [v.flatten() for part in sorted(update.deltas) for v in update.deltas[part].values()]
    )


@pytest.mark.parametrize(("algorithm", "field"), CASES)
def test_batched_equals_sequential_with_each_setting_changed(federation, algorithm, field):
    preset = ALGORITHMS[algorithm]
    base = preset.params(**{k: v for k, v in BASE.items() if k in preset.keys()})
    changed = dataclasses.replace(base, **{field: ALTERNATIVES[field]})
    assert getattr(changed, field) != getattr(base, field)
    seq, vec = (
        _updates(federation, changed, batched=False),
        _updates(federation, changed, batched=True),
    )
    if base not in _sequential_base:
        _sequential_base[base] = _updates(federation, base, batched=False)
    before = _sequential_base[base]
    # the setting matters in this setup (else the comparison would prove nothing)
    assert any(
        a.metrics != b.metrics
        or a.deltas.keys() != b.deltas.keys()
        or not torch.equal(_flat(a), _flat(b))
        for a, b in zip(seq, before)
    ), field
    _assert_same(seq, vec, field)


def test_batched_equals_sequential_for_the_paper_preset(federation):
    """fedlabel_paper's settings together (each is also changed alone above)."""
    params = ALGORITHMS["fedlabel_paper"].params(**BASE)
    seq = _updates(federation, params, batched=False)
    _assert_same(seq, _updates(federation, params, batched=True), "fedlabel_paper")


def _assert_same(seq, vec, field: str) -> None:
    for a, b in zip(seq, vec, strict=True):
        assert (a.client_id, a.weight, a.deltas.keys()) == (b.client_id, b.weight, b.deltas.keys())
        assert a.metrics.keys() == b.metrics.keys()
        for k, v in a.metrics.items():
            assert b.metrics[k] == (
                pytest.approx(v, rel=1e-4, abs=1e-6) if k.startswith("loss") else v
            ), (field, k)
        da, db = _flat(a), _flat(b)
        assert float((db - da).abs().max()) <= 0.05 * float(da.abs().max()) + 1e-7, field
