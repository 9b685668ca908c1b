import numpy as np
import pytest
import torch

from fedlabel.data import DataError, load_npz


def arrays(rgb: bool = False, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (8, 8, 3) if rgb else (8, 8)
    return {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 4).reshape(-1, 1).astype(np.uint8),
        "val_images": np.zeros((2, 3), np.float32),  # ignored, even though it is malformed
        "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 5).astype(np.int32),
    }


def save(tmp_path, **data) -> str:
    path = tmp_path / "set.npz"
    np.savez(path, **data)
    return str(path)


def test_grayscale_with_n_by_1_labels(tmp_path):
    data = arrays()
    ds = load_npz(save(tmp_path, **data))
    assert ds.name == "set" and ds.num_classes == 5  # max label (4, in test) + 1
    assert ds.train_images.shape == (12, 1, 8, 8) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.shape == (12,)
    np.testing.assert_array_equal(ds.train_images[:, 0].numpy(), data["train_images"])
    np.testing.assert_array_equal(ds.train_labels.numpy(), data["train_labels"][:, 0])
    assert (ds.in_channels, ds.image_size) == (1, 8)


def test_rgb_becomes_channels_first(tmp_path):
    data = arrays(rgb=True)
    ds = load_npz(save(tmp_path, **data))
    assert ds.test_images.shape == (6, 3, 8, 8) and ds.in_channels == 3
    np.testing.assert_array_equal(ds.test_images.permute(0, 2, 3, 1).numpy(), data["test_images"])


def test_float_images_in_unit_range_are_scaled(tmp_path):
    data = arrays()
    data["train_images"] = np.full((12, 8, 8), 0.5, np.float32)
    data["train_images"][0, 0, 0] = 1.0
    ds = load_npz(save(tmp_path, **data))
    assert ds.train_images.dtype == torch.uint8
    assert ds.train_images[0, 0, 0, 0] == 255 and ds.train_images[1, 0, 0, 0] == 128


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing") as info:
        load_npz(str(tmp_path / "absent.npz"))
    assert "absent.npz" in str(info.value)


def test_truncated_archive(tmp_path):
    path = tmp_path / "set.npz"
    np.savez_compressed(path, **arrays())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a valid .npz archive") as info:
        load_npz(str(path))
    assert str(path) in str(info.value)


def test_corrupt_member(tmp_path):
    path = tmp_path / "set.npz"
    np.savez_compressed(path, **arrays())
    raw = bytearray(path.read_bytes())
    start = raw.index(b"train_images.npy") + 40  # inside the first member's deflate stream
    raw[start : start + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt .npz archive") as info:
        load_npz(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"plain text, not an archive", b""])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "set.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a valid .npz archive"):
        load_npz(str(path))


def test_single_npy_array(tmp_path):
    path = tmp_path / "set.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        load_npz(str(path))


def test_missing_keys_are_named(tmp_path):
    data = arrays()
    del data["test_labels"], data["train_images"]
    with pytest.raises(DataError, match="missing key") as info:
        load_npz(save(tmp_path, **data))
    message = str(info.value)
    assert (
        "train_images, test_labels" in message
        and "found train_labels, val_images, test_images" in message
    )


def bad(**changes):
    data = arrays()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            bad(train_images=np.zeros((12, 64), np.uint8)),
            r"train_images must be N x H x W.*\(12, 64\)",
        ),
        (bad(test_images=np.zeros((6, 8, 8, 4), np.uint8)), "test_images must be N x H x W"),
        (
            bad(train_labels=np.zeros((11, 1), np.uint8)),
            "train_labels has 11 entries but there are 12 images",
        ),
        (bad(test_labels=np.array([0, 1, -1, 2, 0, 1])), "negative labels"),
        (bad(train_labels=np.full(12, 1.5)), "must be integers, got float64"),
        (bad(train_labels=np.zeros((12, 3), np.int64)), "multi-label"),
        (bad(train_images=np.full((12, 8, 8), np.nan, np.float32)), "NaN"),
        (bad(train_images=np.full((12, 8, 8), 3.0, np.float32)), r"must lie in \[0, 1\]"),
        (bad(train_images=np.zeros((12, 8, 8), np.int16)), "must be uint8 or float"),
        (bad(test_images=np.zeros((6, 9, 9), np.uint8)), "train images are"),
        (bad(train_images=np.zeros((12, 8, 7), np.uint8)), "H == W"),
    ],
)
def test_invalid_content_names_the_file(tmp_path, data, message):
    path = save(tmp_path, **data)
    with pytest.raises(DataError, match=message) as info:
        load_npz(path)
    assert path in str(info.value)
