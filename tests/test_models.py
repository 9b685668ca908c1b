from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedlabel.models import MODELS, ResNet18GN, SmallCNN, build_model


@functools.cache
def _model(name: str, in_channels: int, num_classes: int = 10) -> nn.Module:
    """Shared across tests (ResNet-18 takes a while to build); tests must not mutate it."""
    torch.manual_seed(0)
    return build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=28)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_and_feature_shapes(name: str, in_channels: int) -> None:
    model = _model(name, in_channels, num_classes=7)
    x = torch.rand(2, in_channels, 28, 28)
    dim = {"cnn": 128, "resnet18": 512}[name]
    assert model(x).shape == (2, 7)
    assert model.features(x).shape == (2, dim)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == 7


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_batchnorm_and_no_buffers(name: str) -> None:
    model = _model(name, 3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert list(model.buffers()) == []
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_is_classifier_of_features(name: str) -> None:
    model = _model(name, 1)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model.classifier(model.features(x)), model(x))


def test_resnet18_parameter_count() -> None:
    # CIFAR-style ResNet-18, 10 classes: 11,173,962 parameters (GroupNorm affine = BN affine).
    count = sum(p.numel() for p in _model("resnet18", 3).parameters())
    assert 11_000_000 < count < 11_300_000


def test_resnet18_large_images_use_imagenet_stem() -> None:
    model = ResNet18GN(in_channels=3, num_classes=5, image_size=96)
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model(torch.rand(1, 3, 96, 96)).shape == (1, 5)
    assert not any(isinstance(m, nn.MaxPool2d) for m in _model("resnet18", 3).modules())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10, image_size=28)
    size = 28 if name == "cnn" else 16  # ResNet accepts any size; keep the test fast
    x, y = torch.rand(3, 3, size, size), torch.tensor([0, 1, 2])
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(MODELS))
def test_functional_call_matches_module(name: str) -> None:
    model = _model(name, 1)
    x = torch.rand(2, 1, 28, 28)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x))
    shifted = {n: p + 0.01 for n, p in params.items()}
    assert not torch.allclose(functional_call(model, shifted, (x,)), model(x))


def test_per_sample_gradients_with_vmap() -> None:
    model = _model("cnn", 1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 4, 9])

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        single = grad(loss)(params, x[i], y[i])
        for n in params:
            torch.testing.assert_close(per_sample[n][i], single[n])


def test_small_cnn_other_sizes_and_invalid_size() -> None:
    model = SmallCNN(in_channels=3, num_classes=4, image_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        SmallCNN(image_size=30)


def test_build_model_registry_and_unknown_name() -> None:
    assert MODELS == {"cnn": SmallCNN, "resnet18": ResNet18GN}
    assert isinstance(build_model("cnn", in_channels=1, num_classes=10, image_size=28), SmallCNN)
    with pytest.raises(ValueError, match="cnn.*resnet18"):
        build_model("vgg", in_channels=1, num_classes=10, image_size=28)


def test_cnn_pool_without_autograd_equals_max_pool2d() -> None:
    model = _model("cnn", 1)
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        fast = model(x)
    slow = model(x).detach()  # autograd on: the max_pool2d path
    assert torch.equal(fast, slow)
    odd = torch.rand(2, 3, 5, 6)
    with torch.no_grad():
        assert torch.equal(model.body[3](odd), torch.nn.functional.max_pool2d(odd, 2))


@pytest.mark.parametrize("values", ["continuous", "ties"])
def test_cnn_pool_with_autograd_equals_max_pool2d_in_values_and_gradients(values) -> None:
    """The CPU autograd path routes each window's gradient to its first maximum, as max_pool2d:
    with many exact ties (ReLU's zeros, small integers) too."""
    pool = _model("cnn", 1).body[3]
    g = torch.Generator().manual_seed(0)
    shape = (5, 4, 8, 6)
    if values == "ties":
        x = torch.randint(0, 3, shape, generator=g).float()
    else:
        x = torch.relu(torch.randn(shape, generator=g))
    x.requires_grad_(True)
    upstream = torch.randn(5, 4, 4, 3, generator=g)
    ours, theirs = pool(x), nn.functional.max_pool2d(x, 2)
    assert torch.equal(ours, theirs)
    assert torch.equal(
        torch.autograd.grad(ours, x, upstream)[0], torch.autograd.grad(theirs, x, upstream)[0]
    )
    # under the vectorized engine's transforms: per-sample gradients through vmap(grad(...))
    batch = torch.randn(3, *shape, generator=g)

    def loss(pooled):
        return lambda v: (pooled(v) ** 2).sum()

    per_sample = vmap(grad(loss(pool)))(batch)
    expected = vmap(grad(loss(lambda v: nn.functional.max_pool2d(v, 2))))(batch)
    assert torch.equal(per_sample, expected)
