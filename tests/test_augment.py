from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from fedlabel.augment import (
    _OPS,
    _PIXEL_OPS,
    _affine_thetas,
    _factor,
    check_strong_settings,
    draw_strong,
    strong_augment,
    weak_augment,
)
from fedlabel.errors import ConfigError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int = 1, size: int = 28, seed: int = 0) -> Tensor:
    return torch.rand(n, c, size, size, generator=_gen(seed + 1000))


AUGMENTS: dict[str, Callable[..., Tensor]] = {
    "weak": lambda x, g: weak_augment(x, generator=g, max_shift=3, flip=True),
    "strong": lambda x, g: strong_augment(x, generator=g, num_ops=2, magnitude=10),
}


@pytest.mark.parametrize("kind", sorted(AUGMENTS))
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_input_untouched(kind: str, channels: int) -> None:
    x = _images(64, channels)
    before = x.clone()
    out = AUGMENTS[kind](x, _gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("kind", sorted(AUGMENTS))
def test_same_seed_same_output_different_seed_different(kind: str) -> None:
    x = _images(32, 3)
    assert torch.equal(AUGMENTS[kind](x, _gen(5)), AUGMENTS[kind](x, _gen(5)))
    assert not torch.equal(AUGMENTS[kind](x, _gen(5)), AUGMENTS[kind](x, _gen(6)))


def test_weak_without_shift_or_flip_is_identity() -> None:
    x = _images(16, 3)
    assert torch.equal(weak_augment(x, generator=_gen(), max_shift=0, flip=False), x)


@pytest.mark.parametrize("max_shift", [1, 2, 4])
def test_weak_shift_moves_single_pixel_within_bounds(max_shift: int) -> None:
    n, row, col = 500, 12, 15
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, row, col] = 1.0
    out = weak_augment(x, generator=_gen(), max_shift=max_shift)
    assert torch.equal((out != 0).flatten(1).sum(1), torch.ones(n, dtype=torch.long))
    assert torch.equal(out.flatten(1).sum(1), torch.ones(n))
    pos = out[:, 0].flatten(1).argmax(1)
    d_row, d_col = pos // 28 - row, pos % 28 - col
    assert d_row.abs().max() == max_shift and d_col.abs().max() == max_shift
    assert len({(int(a), int(b)) for a, b in zip(d_row, d_col)}) == (2 * max_shift + 1) ** 2


def test_weak_shift_fills_with_zeros() -> None:
    out = weak_augment(torch.ones(200, 1, 8, 8), generator=_gen(), max_shift=2)
    zeros = (out == 0).flatten(1).sum(1)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert zeros.max() == 8 * 8 - 6 * 6 and zeros.min() == 0


def test_weak_flip_is_per_sample() -> None:
    x = _images(1, 3).expand(64, -1, -1, -1)
    out = weak_augment(x, generator=_gen(), max_shift=0, flip=True)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ same) and flipped.any() and same.any()


def test_strong_without_ops_or_cutout_is_identity() -> None:
    x = _images(16, 3)
    assert torch.equal(strong_augment(x, generator=_gen(), num_ops=0, cutout=0), x)


@pytest.mark.parametrize("size", [1, 6, 10])
def test_cutout_is_a_border_clipped_square_of_half(size: int) -> None:
    h = w = 20
    out = strong_augment(torch.zeros(300, 1, h, w), generator=_gen(), num_ops=0, cutout=size)
    assert set(out.unique().tolist()) <= {0.0, 0.5}
    interior = 0
    for mask in out[:, 0] == 0.5:
        rows = mask.any(1).nonzero().squeeze(1)
        cols = mask.any(0).nonzero().squeeze(1)
        height, width = len(rows), len(cols)
        # The filled region is exactly its bounding box, contiguous and at most size x size.
        assert mask.sum() == height * width
        assert rows[-1] - rows[0] + 1 == height and cols[-1] - cols[0] + 1 == width
        if 0 < rows[0] and rows[-1] < h - 1:
            assert height == size
        if 0 < cols[0] and cols[-1] < w - 1:
            assert width == size
        interior += int(height == width == size)
    assert interior > 0


@pytest.mark.parametrize(("channels", "expected"), [(3, 23), (1, 21)])
def test_strong_ops_and_signs_are_per_sample(channels: int, expected: int) -> None:
    # 14 ops, 9 of them with a random sign, on identical inputs: 23 distinct outcomes, 21 for
    # grey images where colour (both signs) equals identity. Values in [0.2, 0.8] so that no
    # op is the identity at magnitude 30.
    x = (0.2 + 0.6 * _images(1, channels)).expand(1000, -1, -1, -1)
    out = strong_augment(x, generator=_gen(), num_ops=1, magnitude=30, cutout=0)
    assert len(torch.unique(out.flatten(1), dim=0)) == expected


def test_strong_magnitude_zero_keeps_geometry() -> None:
    # One op each: autocontrast then solarize (threshold 1 at magnitude 0) would erase the pixel.
    x = torch.zeros(200, 1, 28, 28)
    x[:, 0, 10, 17] = 0.6
    out = strong_augment(x, generator=_gen(), num_ops=1, magnitude=0, cutout=0)
    assert torch.equal((out != 0).flatten(1).sum(1), torch.ones(200, dtype=torch.long))
    assert torch.equal(out[:, 0].flatten(1).argmax(1), torch.full((200,), 10 * 28 + 17))


def test_strong_ops_match_pil() -> None:
    pil = pytest.importorskip("PIL.Image")
    enhance = pytest.importorskip("PIL.ImageEnhance")
    ops = pytest.importorskip("PIL.ImageOps")
    x = torch.randint(0, 256, (1, 3, 16, 16), generator=_gen()).float() / 255
    image = pil.fromarray((x[0] * 255).round().byte().permute(1, 2, 0).numpy().copy())
    level, plus = 10 / 30, torch.ones(1)
    references = {
        "autocontrast": ops.autocontrast(image),
        "equalize": ops.equalize(image),
        "solarize": ops.solarize(image, round(255 * (1 - level))),
        "posterize": ops.posterize(image, 7),
        "color": enhance.Color(image).enhance(1.3),
        "contrast": enhance.Contrast(image).enhance(1.3),
        "brightness": enhance.Brightness(image).enhance(1.3),
        "sharpness": enhance.Sharpness(image).enhance(1.3),
        "rotate": image.rotate(10),
        "shear_x": image.transform(image.size, pil.Transform.AFFINE, (1, 0.1, -0.8, 0, 1, 0)),
        "translate_y": image.transform(image.size, pil.Transform.AFFINE, (1, 0, 0, 0, 1, -2)),
    }
    for name, ref in references.items():
        expected = torch.tensor(np.asarray(ref), dtype=torch.float32).permute(2, 0, 1)[None]
        if name in _PIXEL_OPS:
            got = _PIXEL_OPS[name](x, plus, level)
        else:
            theta = _affine_thetas(torch.tensor([_OPS.index(name)]), plus, level, 16, 16)
            grid = torch.nn.functional.affine_grid(theta, [1, 3, 16, 16], align_corners=False)
            got = torch.nn.functional.grid_sample(x, grid, mode="nearest", align_corners=False)
        # PIL rounds to 8 bits after each step (grey, blend); we stay in float.
        assert (got * 255 - expected).abs().max() <= 1.5, name


@pytest.mark.parametrize(("scale", "level", "bits"), [(30, 1 / 3, 7), (10, 1.0, 4)])
def test_magnitude_scale_sets_the_ops_strength(scale: int, level: float, bits: int) -> None:
    # M = 10: a third of every op's range on torchvision's 0..30 scale, all of it on Cubuk et
    # al.'s 0..10 scale (rotate 30 degrees, shear 0.3, translate 0.45 of the side, enhancement
    # factors 1 +- 0.9, posterize to 4 bits, solarize everything).
    draws = draw_strong(4, 16, 16, generator=_gen(), magnitude=10, magnitude_scale=scale)
    assert draws.level == level
    plus = torch.ones(1)

    def theta(op: str) -> Tensor:
        return _affine_thetas(torch.tensor([_OPS.index(op)]), plus, draws.level, 16, 16)[0]

    rotate = theta("rotate")
    assert np.degrees(float(torch.atan2(rotate[1, 0], rotate[0, 0]))) == pytest.approx(30 * level)
    assert float(theta("shear_x")[0, 1]) == pytest.approx(0.3 * level)
    assert float(theta("translate_x")[0, 2]) == pytest.approx(-2 * 0.45 * level)  # [-1, 1] units
    assert float(_factor(plus, draws.level)) == pytest.approx(1 + 0.9 * level)
    white, grey = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.25)
    posterized = float(_PIXEL_OPS["posterize"](white, plus, draws.level)) * 255
    assert posterized == pytest.approx(256 - 2 ** (8 - bits))
    solarized = float(_PIXEL_OPS["solarize"](grey, plus, draws.level))
    assert solarized == (0.75 if level == 1.0 else 0.25)


def test_magnitude_scale_changes_only_the_level() -> None:
    x = _images(200, 3)
    cubuk = strong_augment(x, generator=_gen(), num_ops=2, magnitude=10, magnitude_scale=10)
    assert torch.equal(cubuk, strong_augment(x, generator=_gen(), num_ops=2, magnitude=30))
    default = strong_augment(x, generator=_gen(), num_ops=2, magnitude=10)
    assert torch.equal(
        default, strong_augment(x, generator=_gen(), num_ops=2, magnitude=10, magnitude_scale=30)
    )
    assert not torch.equal(default, cubuk)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ((1, 10, 10, 0), "strong_magnitude_scale"),
        ((1, 31, 10, 30), "strong_magnitude"),
        ((1, 11, 10, 10), "strong_magnitude"),
        ((1, -1, 10, 10), "strong_magnitude"),
        ((-1, 10, 10, 30), "strong_num_ops"),
        ((1, 10, -1, 30), "strong_cutout"),
    ],
)
def test_check_strong_settings_names_the_bad_setting(settings: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^algorithm\.{field}: ") as err:
        check_strong_settings(*settings)
    assert "\n" not in str(err.value)
    check_strong_settings(1, 10, 10, 10)  # Cubuk et al.'s M = 10 on their scale


def test_invalid_arguments() -> None:
    x = _images(2)
    with pytest.raises(ValueError):
        weak_augment(x, generator=_gen(), max_shift=-1)
    with pytest.raises(ValueError):
        strong_augment(x, generator=_gen(), magnitude=31)
    with pytest.raises(ValueError):
        strong_augment(x, generator=_gen(), magnitude=11, magnitude_scale=10)
    with pytest.raises(ValueError):
        strong_augment(x, generator=_gen(), magnitude=0, magnitude_scale=0)
    with pytest.raises(ValueError):
        strong_augment(x[0], generator=_gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_result_on_cuda() -> None:
    x = _images(64, 3)
    for augment in AUGMENTS.values():
        torch.testing.assert_close(augment(x.cuda(), _gen(3)).cpu(), augment(x, _gen(3)))
