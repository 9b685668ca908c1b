"""model.activation=relu|tanh: the hidden nonlinearity of both models, validated by the config,
accepted by DP-SGD's bk mode and the vectorized engine, and absent from older checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedlabel
from fedlabel.checkpoint import config_differences
from fedlabel.config import Config, ModelConfig, config_from_dict, config_to_dict
from fedlabel.errors import ConfigError
from fedlabel.models import ACTIVATIONS, MODELS, build_model
from fedlabel.privacy import dpsgd
from fedlabel.privacy.dpsgd import DpSgd, DpSgdSettings
from fedlabel.training import SgdConfig, get_params
from tests.helpers import tiny_model


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels=3, num_classes=5, image_size=16, **kwargs)


def _kinds(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.Tanh))}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_relu_default_is_unchanged(name):
    x = torch.rand(2, 3, 16, 16)
    default, relu = _build(name), _build(name, activation="relu")
    assert _kinds(default) == {nn.ReLU}
    assert list(default.state_dict()) == list(relu.state_dict())
    for (_, a), (_, b) in zip(default.named_parameters(), relu.named_parameters()):
        assert torch.equal(a, b)
    assert torch.equal(default(x), relu(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tanh_replaces_every_relu(name):
    x = torch.rand(2, 3, 16, 16)
    relu, tanh = _build(name), _build(name, activation="tanh")
    assert _kinds(tanh) == {nn.Tanh}
    assert list(tanh.state_dict()) == list(relu.state_dict())  # same parameters, same init
    for (_, a), (_, b) in zip(relu.named_parameters(), tanh.named_parameters()):
        assert torch.equal(a, b)
    assert not torch.allclose(tanh(x), relu(x))
    assert tanh.features(x).abs().max() <= 1  # bounded embedding (the last op is tanh)


def test_unknown_activation_is_refused():
    assert sorted(ACTIVATIONS) == ["relu", "tanh"]
    with pytest.raises(ConfigError, match=r"model\.activation: .*'gelu'.*relu or tanh"):
        config_from_dict({"model": {"activation": "gelu"}})
    with pytest.raises(ValueError, match="relu.*tanh"):
        _build("cnn", activation="gelu")
    cfg = config_from_dict({"model": {"name": "resnet18", "activation": "tanh"}})
    assert cfg.model == ModelConfig(name="resnet18", activation="tanh")


def test_checkpoints_without_the_key_ran_relu():
    current = config_to_dict(Config())
    saved = {**current, "model": {"name": "cnn"}}  # written before model.activation existed
    assert config_differences(saved, current) == []
    tanh = {**current, "model": {"name": "cnn", "activation": "tanh"}}
    assert config_differences(saved, tanh) == ["model.activation (checkpoint 'relu', now 'tanh')"]


def test_bookkeeping_clipped_sum_matches_opacus_for_tanh():
    """bk walks only layers with parameters; Tanh has none. Its clipped sum equals Opacus's."""
    model, params = tiny_model(activation="tanh")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g) * 4, torch.randint(0, 3, (6,), generator=g)
    applied = {}
    for mode in ("bk", "hooks"):
        trainer = DpSgd(DpSgdSettings(0.0, 0.05, grad_sample_mode=mode), torch.Generator())
        batches = trainer.batches(6, batch_size=6, steps=1, generator=torch.Generator())
        new, _ = trainer.train(
            model,
            params,
            batches=batches,
            loss_fn=lambda f, idx: F.cross_entropy(f(x[idx]), y[idx]),
            sgd=SgdConfig(lr=1.0),
        )
        applied[mode] = {k: params[k] - new[k] for k in params}
    for k in params:
        torch.testing.assert_close(applied["bk"][k], applied["hooks"][k], rtol=1e-4, atol=1e-6)
    assert dpsgd.grad_sample_module(model, torch.device("cpu"), "bk") is not None
    assert get_params(model).keys() == params.keys()


SMOKE = [
    "experiment=smoke",
    "device=cpu",
    "rounds=1",
    "tensorboard=false",
    "algorithm=fedavg",
    "algorithm.local_steps=2",
    "model.activation=tanh",
]


@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
def test_tiny_tanh_run_completes(tmp_path, engine):
    from fedlabel.data import DataError, load_fashion_mnist

    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    summary = fedlabel.run(
        [*SMOKE, f"engine={engine}", f"output_dir={tmp_path / engine}"], progress=False
    )
    assert summary["status"] == "completed"
    assert summary["config"]["model"] == {"name": "cnn", "activation": "tanh"}
    assert summary["rounds"][0]["loss"] > 0
