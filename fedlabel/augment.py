"""Batched, per-sample random image augmentations for FixMatch-style training.

Images are float tensors ``N x C x H x W`` in [0, 1]. Every random choice is drawn on the CPU
from the caller's ``torch.Generator`` and then moved to the input's device, so a given generator
state yields the same choices on any device. Inputs are never modified in place.

``weak_augment``: a random integer translation of up to ``max_shift`` pixels per axis (a crop of
the zero-padded image) and, optionally, a horizontal flip with probability 0.5.

``strong_augment``: RandAugment (Cubuk et al. 2020) as used by FixMatch. Each sample draws
``num_ops`` ops uniformly, with replacement, from the list below; each op runs at the fixed
``magnitude`` m on the scale 0..``magnitude_scale`` (S), with level ``l = m / S`` and, for
signed ops, a random sign ``s`` per sample and op. Ranges follow torchvision's ``RandAugment``;
``l = 1`` is each op's strongest setting. The default S = 30 is torchvision's scale (its 31
magnitude bins), on which m = 10 is a third of the strongest; S = 10 is Cubuk et al.'s scale
(AutoAugment's, with 10 the strongest), on which their M = 10 is ``l = 1``. Config:
``algorithm.strong_magnitude`` and ``algorithm.strong_magnitude_scale``.

====================  ==========================================================
identity              no change
autocontrast          per-channel min/max stretch to [0, 1]
equalize              per-channel histogram equalisation on 256 levels (PIL's algorithm)
rotate                ``s * 30 * l`` degrees about the centre
solarize              invert pixels ``>= 1 - l``
color                 saturation factor ``1 + s * 0.9 * l`` (identity for 1 channel)
posterize             keep ``8 - round(4 * l)`` bits of each 8-bit level
contrast              contrast factor ``1 + s * 0.9 * l`` (blend with the grey mean)
brightness            brightness factor ``1 + s * 0.9 * l`` (blend with black)
sharpness             sharpness factor ``1 + s * 0.9 * l`` (blend with PIL's smooth filter)
shear_x, shear_y      shear ``s * 0.3 * l`` about the centre
translate_x/_y        ``s * 0.45 * l`` of the width / height
====================  ==========================================================

Geometric ops use nearest-neighbour sampling and fill with 0, as torchvision's default. After
the ops, a ``cutout x cutout`` square at a uniformly random centre (clipped at the border) is
filled with 0.5, as FixMatch always does; ``cutout=0`` disables it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from fedlabel.errors import check

_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "posterize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
TORCHVISION_SCALE = 30  # torchvision's RandAugment: 31 magnitude bins, 0..30
CUBUK_SCALE = 10  # Cubuk et al. 2020 (and AutoAugment): 0..10


def check_strong_settings(num_ops: int, magnitude: int, cutout: int, magnitude_scale: int) -> None:
    """ConfigError naming the first ``algorithm.strong_*`` setting :func:`strong_augment` cannot
    use (checked in this order: the magnitude scale, the magnitude on it, number of ops, cutout
    size)."""
    check(
        magnitude_scale >= 1,
        "algorithm.strong_magnitude_scale",
        f"must be >= 1 ({TORCHVISION_SCALE}: torchvision's scale, {CUBUK_SCALE}: Cubuk et al.'s),"
        f" got {magnitude_scale}",
    )
    check(
        0 <= magnitude <= magnitude_scale,
        "algorithm.strong_magnitude",
        f"must be in [0, {magnitude_scale}] (algorithm.strong_magnitude_scale), got {magnitude}",
    )
    check(num_ops >= 0, "algorithm.strong_num_ops", f"must be >= 0, got {num_ops}")
    check(cutout >= 0, "algorithm.strong_cutout", f"must be >= 0, got {cutout}")


def _check_generator(generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")


def _check_images(x: Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float N x C x H x W tensor, got {x.dtype} {tuple(x.shape)}")


def weak_augment(
    x: Tensor, *, generator: torch.Generator, max_shift: int = 2, flip: bool = False
) -> Tensor:
    """Randomly shift each image by up to ``max_shift`` pixels per axis (zero padding), and
    flip it horizontally with probability 0.5 if ``flip``."""
    _check_images(x)
    return apply_weak(x, draw_weak(len(x), generator=generator, max_shift=max_shift, flip=flip))


@dataclass(frozen=True)
class WeakDraws:
    """The random choices of :func:`weak_augment` for ``n`` images (CPU tensors)."""

    max_shift: int
    offsets: Tensor  # n x 2 row/column offsets into the padded image
    flips: Tensor | None  # n bool, None without flipping

    @staticmethod
    def cat(draws: list[WeakDraws]) -> WeakDraws:
        """One set of draws for the concatenation of the images the parts were drawn for."""
        flips = (
            None if draws[0].flips is None else torch.cat([cast(Tensor, d.flips) for d in draws])
        )
        return WeakDraws(draws[0].max_shift, torch.cat([d.offsets for d in draws]), flips)


def draw_weak(
    n: int, *, generator: torch.Generator, max_shift: int = 2, flip: bool = False
) -> WeakDraws:
    """Draw :func:`weak_augment`'s choices for ``n`` images, in its order, from ``generator``."""
    _check_generator(generator)
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) if flip else None
    return WeakDraws(max_shift, offsets, flips)


def apply_weak(x: Tensor, draws: WeakDraws) -> Tensor:
    """Apply drawn shifts (and flips) to ``x``; row i of the draws belongs to image i."""
    _check_images(x)
    n, c, h, w = x.shape
    s = draws.max_shift
    offsets = draws.offsets.to(x.device)
    padded = F.pad(x, (s, s, s, s))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * s))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if draws.flips is not None:
        out = torch.where(draws.flips.to(x.device)[:, None, None, None], out.flip(-1), out)
    return out


def _grey(x: Tensor) -> Tensor:
    """Per-pixel luma ``N x 1 x H x W`` (ITU-R 601-2 for RGB, channel mean otherwise)."""
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return (x * weights[:, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """``degenerate + factor * (x - degenerate)`` clamped to [0, 1], one factor per sample."""
    return (degenerate + factor[:, None, None, None] * (x - degenerate)).clamp(0.0, 1.0)


def _to_levels(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255).long()


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    lo = lo.masked_fill(flat, 0.0)
    span = (hi - lo).masked_fill(flat, 1.0)
    return ((x - lo) / span).clamp(0.0, 1.0)


def _equalize(x: Tensor) -> Tensor:
    """PIL/torchvision histogram equalisation, per sample and channel, on 256 levels."""
    n, c, h, w = x.shape
    levels = _to_levels(x).flatten(2)
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=x.device)
    hist = hist.scatter_add(2, levels, torch.ones_like(levels))
    # PIL's step ignores the count of the highest level present.
    top_count = hist.gather(2, levels.amax(2, keepdim=True))
    step = (h * w - top_count) // 255
    lut = (hist.cumsum(2) + step // 2) // step.clamp_min(1)
    lut = F.pad(lut, (1, 0))[..., :-1].clamp(0, 255)
    out = lut.gather(2, levels).to(x.dtype).div(255).view(n, c, h, w)
    return torch.where((step == 0).view(n, c, 1, 1), x, out)


def _posterize(x: Tensor, bits: int) -> Tensor:
    mask = 256 - 2 ** (8 - bits)
    return (_to_levels(x) & mask).to(x.dtype) / 255


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter on the interior; the one-pixel border is kept."""
    c = x.shape[1]
    if x.shape[2] < 3 or x.shape[3] < 3:
        return x
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    return out


def _factor(sign: Tensor, level: float) -> Tensor:
    return 1.0 + sign * 0.9 * level


_PIXEL_OPS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "autocontrast": lambda x, s, lv: _autocontrast(x),
    "equalize": lambda x, s, lv: _equalize(x),
    "solarize": lambda x, s, lv: torch.where(x >= 1.0 - lv, 1.0 - x, x),
    "color": lambda x, s, lv: x if x.shape[1] == 1 else _blend(x, _grey(x), _factor(s, lv)),
    "posterize": lambda x, s, lv: _posterize(x, 8 - round(4 * lv)),
    "contrast": lambda x, s, lv: _blend(
        x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), _factor(s, lv)
    ),
    "brightness": lambda x, s, lv: _blend(x, torch.zeros_like(x), _factor(s, lv)),
    "sharpness": lambda x, s, lv: _blend(x, _smooth(x), _factor(s, lv)),
}


def _affine_thetas(ops: Tensor, sign: Tensor, level: float, h: int, w: int) -> Tensor:
    """Per-sample ``affine_grid`` matrices (output -> input, normalised coordinates)."""
    is_op = {name: ops == _OPS.index(name) for name in _GEOMETRIC}
    angle = sign * math.radians(30 * level)
    shear = sign * 0.3 * level
    one, zero = torch.ones_like(sign), torch.zeros_like(sign)
    # Inverse map in centred pixel coordinates: p_in = A @ p_out + t.
    a00 = torch.where(is_op["rotate"], angle.cos(), one)
    a11 = a00
    a01 = torch.where(is_op["rotate"], -angle.sin(), torch.where(is_op["shear_x"], shear, zero))
    a10 = torch.where(is_op["rotate"], angle.sin(), torch.where(is_op["shear_y"], shear, zero))
    tx = torch.where(is_op["translate_x"], -sign * 0.45 * level * w, zero)
    ty = torch.where(is_op["translate_y"], -sign * 0.45 * level * h, zero)
    # Normalised coordinates are pixel coordinates scaled by diag(2 / w, 2 / h).
    row0 = torch.stack([a00, a01 * h / w, tx * 2 / w], dim=1)
    row1 = torch.stack([a10 * w / h, a11, ty * 2 / h], dim=1)
    return torch.stack([row0, row1], dim=1)


def _cutout_mask(n: int, h: int, w: int, *, size: int, generator: torch.Generator) -> Tensor:
    """``N x 1 x H x W`` boolean mask of a ``size`` square at a random centre, border-clipped."""
    top = torch.randint(0, h, (n,), generator=generator) - size // 2
    left = torch.randint(0, w, (n,), generator=generator) - size // 2
    rows = torch.arange(h) - top[:, None]
    cols = torch.arange(w) - left[:, None]
    in_rows = (rows >= 0) & (rows < size)
    in_cols = (cols >= 0) & (cols < size)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def strong_augment(
    x: Tensor,
    *,
    generator: torch.Generator,
    num_ops: int = 1,
    magnitude: int = 10,
    cutout: int = 10,
    magnitude_scale: int = TORCHVISION_SCALE,
) -> Tensor:
    """RandAugment with ``num_ops`` random ops per sample at ``magnitude`` (0..magnitude_scale),
    then a ``cutout`` square filled with 0.5 (see the module docstring for ops and ranges)."""
    _check_images(x)
    n, _, h, w = x.shape
    draws = draw_strong(
        n,
        h,
        w,
        generator=generator,
        num_ops=num_ops,
        magnitude=magnitude,
        cutout=cutout,
        magnitude_scale=magnitude_scale,
    )
    return apply_strong(x, draws)


@dataclass(frozen=True)
class StrongDraws:
    """The random choices of :func:`strong_augment` for ``n`` images (CPU tensors)."""

    magnitude: int
    ops: Tensor  # n x num_ops op indices into _OPS
    signs: Tensor  # n x num_ops, +-1.0
    cutout: Tensor | None  # n x 1 x H x W bool, None without cutout
    magnitude_scale: int

    @property
    def level(self) -> float:
        """The ops' strength in [0, 1]: ``magnitude / magnitude_scale``."""
        return self.magnitude / self.magnitude_scale

    @staticmethod
    def cat(draws: list[StrongDraws]) -> StrongDraws:
        """One set of draws for the concatenation of the images the parts were drawn for."""
        cutout = (
            None if draws[0].cutout is None else torch.cat([cast(Tensor, d.cutout) for d in draws])
        )
        return StrongDraws(
            draws[0].magnitude,
            torch.cat([d.ops for d in draws]),
            torch.cat([d.signs for d in draws]),
            cutout,
            draws[0].magnitude_scale,
        )


def draw_strong(
    n: int,
    h: int,
    w: int,
    *,
    generator: torch.Generator,
    num_ops: int = 1,
    magnitude: int = 10,
    cutout: int = 10,
    magnitude_scale: int = TORCHVISION_SCALE,
) -> StrongDraws:
    """Draw :func:`strong_augment`'s choices for ``n`` images of ``h x w``, in its order."""
    _check_generator(generator)
    if num_ops < 0 or cutout < 0 or magnitude_scale < 1 or not 0 <= magnitude <= magnitude_scale:
        raise ValueError(
            "need num_ops >= 0, cutout >= 0, magnitude_scale >= 1 and 0 <= magnitude <= "
            f"magnitude_scale; got {num_ops}, {cutout}, {magnitude_scale}, {magnitude}"
        )
    ops = torch.randint(0, len(_OPS), (n, num_ops), generator=generator)
    signs = torch.randint(0, 2, (n, num_ops), generator=generator).float() * 2 - 1
    mask = _cutout_mask(n, h, w, size=cutout, generator=generator) if cutout else None
    return StrongDraws(magnitude, ops, signs, mask, magnitude_scale)


def apply_strong(x: Tensor, draws: StrongDraws) -> Tensor:
    """Apply drawn RandAugment ops and cutout to ``x``; each image is transformed on its own,
    so the result for a concatenation is the concatenation of the results."""
    _check_images(x)
    n, _, h, w = x.shape
    level = draws.level
    ops, signs = draws.ops, draws.signs.to(x.dtype)
    out = x.clone()
    geometric = torch.tensor([_OPS.index(name) for name in _GEOMETRIC])
    for k in range(ops.shape[1]):
        idx = torch.isin(ops[:, k], geometric).nonzero().squeeze(1)
        if idx.numel():
            theta = _affine_thetas(ops[idx, k], signs[idx, k], level, h, w).to(x.device)
            sel = out.index_select(0, idx.to(x.device))
            grid = F.affine_grid(theta, list(sel.shape), align_corners=False)
            warped = F.grid_sample(sel, grid, mode="nearest", align_corners=False)
            out = out.index_copy(0, idx.to(x.device), warped)
        for name, op in _PIXEL_OPS.items():
            idx = (ops[:, k] == _OPS.index(name)).nonzero().squeeze(1)
            if idx.numel():
                dev_idx = idx.to(x.device)
                changed = op(out.index_select(0, dev_idx), signs[idx, k].to(x.device), level)
                out = out.index_copy(0, dev_idx, changed)
    if draws.cutout is not None:
        out = out.masked_fill(draws.cutout.to(x.device), 0.5)
    return out
