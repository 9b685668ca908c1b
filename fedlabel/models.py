"""Image classifiers with GroupNorm and no buffers.

Every model takes float images in [0, 1] of shape ``N x C x H x W``, standardises them
internally with the fixed map ``(x - 0.5) / 0.5`` and exposes ``features(x)`` (the penultimate
embedding, ``N x D``) and ``classifier`` (the final :class:`torch.nn.Linear`), so that
``forward(x) == classifier(features(x))``. No BatchNorm is used anywhere (``torch.func.vmap`` and
Opacus need per-sample independence) and models hold no buffers, so a model's state is exactly
its ``named_parameters()``.

``activation`` (config ``model.activation``, :data:`ACTIVATIONS`) picks every hidden
nonlinearity: ``relu`` (the default) or ``tanh``, a bounded activation that helps DP-SGD (clipped,
noised gradients; Papernot et al., AAAI 2021; Tramer & Boneh, ICLR 2021).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}

_MEAN = 0.5
_STD = 0.5


def _standardise(x: Tensor) -> Tensor:
    return (x - _MEAN) / _STD


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _group_norm(channels: int, *, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _window_views(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four strided views of the 2x2 windows, in ``max_pool2d``'s scan order."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


class _MaxPool2x2Function(torch.autograd.Function):
    """2x2 max-pool with autograd, for CPU: the maximum of the four strided views and, for the
    backward, the flat index of each window's first maximum (``max_pool2d``'s tie rule: the
    first in scan order), which ``max_pool2d_with_indices_backward`` scatters the gradient to.
    Equal bitwise to ``max_pool2d`` in values and gradients for inputs without NaN; 2x faster
    forward and backward on CPU (the pools took a quarter to a third of a CNN training step).
    Works under ``torch.func`` transforms (the vectorized engine's vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        v00, v01, v10, v11 = _window_views(x)
        top, bottom = torch.maximum(v00, v01), torch.maximum(v10, v11)
        height, width = x.shape[-2:]
        corner = (  # flat index of each window's top-left element
            torch.arange(0, height, 2, device=x.device).view(-1, 1) * width
            + torch.arange(0, width, 2, device=x.device)
        )
        offset = torch.where(bottom > top, (v11 > v10).long() + width, (v01 > v00).long())
        return torch.maximum(top, bottom), offset + corner

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad: Tensor, _indices: Tensor) -> Tensor:  # type: ignore[override]
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


class _MaxPool2x2(nn.MaxPool2d):
    """2x2 max-pool, stride 2, equal bitwise to ``max_pool2d`` (values and gradients) but faster
    on CPU: without autograd (evaluation, pseudo-labeling) the maximum of the four strided views
    (5-10x faster), with autograd on CPU :class:`_MaxPool2x2Function` (2x). Odd sizes, and
    autograd on other devices, take ``max_pool2d``."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            return super().forward(x)
        if not torch.is_grad_enabled():
            v00, v01, v10, v11 = _window_views(x)
            return torch.maximum(torch.maximum(v00, v01), torch.maximum(v10, v11))
        if x.device.type == "cpu":
            return _MaxPool2x2Function.apply(x)[0]
        return super().forward(x)


class SmallCNN(nn.Module):
    """Two conv blocks (16, 32 channels, GroupNorm(8), max-pool) and a 128-unit hidden layer.

    Widths 16/32 rather than 32/64: on a 2-core CPU this is 4x faster in inference and 2.2x in
    training (measured), which buys rounds and seeds; it still reaches ~90% on Fashion-MNIST
    centrally. ``activation``: the three hidden nonlinearities (:data:`ACTIVATIONS`)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {image_size}")
        act = _activation(activation)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.GroupNorm(8, 16),
            act(),
            _MaxPool2x2(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            act(),
            _MaxPool2x2(),
            nn.Flatten(),
            nn.Linear(32 * (image_size // 4) ** 2, 128),
            act(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding, ``N x 128``."""
        return self.body(_standardise(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm and a projection shortcut if needed."""

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str = "relu") -> None:
        super().__init__()
        self.act = _activation(activation)()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm2 = _group_norm(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), _group_norm(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 (BasicBlock x [2, 2, 2, 2], widths 64-512) with GroupNorm(32).

    Images of at most 64 px get the CIFAR stem (3x3 conv, stride 1, no max-pool); larger images
    get the ImageNet stem (7x7 conv, stride 2, 3x3 max-pool). ``activation``: every hidden
    nonlinearity (:data:`ACTIVATIONS`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if image_size <= 64:
            stem: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)]
        stem += [_group_norm(64), _activation(activation)()]
        if image_size > 64:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        layers: list[nn.Module] = []
        in_planes = 64
        for stage, planes in enumerate((64, 128, 256, 512)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(in_planes, planes, stride, activation))
                in_planes = planes
        self.body = nn.Sequential(*stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding, ``N x 512``."""
        return self.body(_standardise(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, type[nn.Module]] = {"cnn": SmallCNN, "resnet18": ResNet18GN}


def build_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, activation: str = "relu"
) -> nn.Module:
    """Instantiate the registered model ``name`` with hidden nonlinearity ``activation``
    (:data:`ACTIVATIONS`); an unknown name or activation raises ValueError."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        activation=activation,
    )
