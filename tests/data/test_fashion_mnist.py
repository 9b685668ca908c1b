import gzip
import hashlib
import shutil
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlabel.data import DataError, load_fashion_mnist
from fedlabel.data import fashion_mnist as fm
from fedlabel.data.fashion_mnist import read_idx

FILES = list(fm.FILES.values())


def idx_bytes(array: np.ndarray) -> bytes:
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def synthetic_payloads(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(20) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(10) % 10,
    }
    return {name: idx_bytes(a) for name, a in arrays.items()}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Synthetic Fashion-MNIST files accepted by the checksum tables; no system directory."""
    payloads = synthetic_payloads()
    for name, payload in payloads.items():
        monkeypatch.setitem(fm.PAYLOAD_SHA256, name, hashlib.sha256(payload).hexdigest())
        monkeypatch.setitem(
            fm.GZ_MD5, name, hashlib.md5(gzip.compress(payload, mtime=0)).hexdigest()
        )
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "no-system")
    return payloads


def populate(directory: Path, payloads: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        write_gz(directory / name, payload)
    return directory


def test_idx_round_trip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    labels = np.array([0, 9, 255], np.uint8)
    out = read_idx(write_gz(tmp_path / "i.gz", idx_bytes(images)))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(
        read_idx(str(write_gz(tmp_path / "l.gz", idx_bytes(labels)))), labels
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (gzip.compress(idx_bytes(np.zeros((2, 3, 3))), mtime=0)[:-12], "truncated or corrupt gzip"),
        (b"not gzip at all", "truncated or corrupt gzip"),
        (
            gzip.compress(struct.pack(">II", 0x802, 3) + b"abc", mtime=0),
            "wrong IDX magic 0x00000802",
        ),
        (gzip.compress(b"\x00\x00", mtime=0), "header truncated"),
        (gzip.compress(struct.pack(">III", 0x803, 2, 3), mtime=0), "header truncated"),
        (
            gzip.compress(struct.pack(">II", 0x801, 5) + b"abcd", mtime=0),
            r"payload has 4 bytes but dims \(5,\) need 5",
        ),
        (gzip.compress(struct.pack(">II", 0x801, 2) + b"abcd", mtime=0), "payload has 4 bytes"),
    ],
)
def test_read_idx_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad-idx.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(DataError, match="missing"):
        read_idx(tmp_path / "absent.gz")


def test_loader_reads_root_first(tmp_path, fake):
    root = populate(tmp_path / "root", fake)
    cache = tmp_path / "cache"
    (cache / "fashion-mnist").mkdir(parents=True)
    for name in FILES:  # a complete but broken cache: using it would fail
        (cache / "fashion-mnist" / name).write_bytes(b"junk")
    ds = load_fashion_mnist(root=str(root), cache_dir=str(cache), download=False)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.train_labels.tolist() == [i % 10 for i in range(20)]
    expected = np.frombuffer(fake["t10k-images-idx3-ubyte.gz"][16:], np.uint8).reshape(10, 28, 28)
    np.testing.assert_array_equal(ds.test_images[:, 0].numpy(), expected)


def test_loader_order_system_then_cache(tmp_path, fake, monkeypatch):
    system = populate(tmp_path / "system", fake)
    monkeypatch.setattr(fm, "SYSTEM_DIR", system)
    cache = tmp_path / "cache"
    (cache / "fashion-mnist").mkdir(parents=True)
    for name in FILES:
        (cache / "fashion-mnist" / name).write_bytes(b"junk")
    incomplete_root = populate(tmp_path / "root", {FILES[0]: b"junk"})
    assert (
        len(
            load_fashion_mnist(
                root=str(incomplete_root), cache_dir=str(cache), download=False
            ).train_labels
        )
        == 20
    )
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "no-system")
    with pytest.raises(DataError, match="truncated or corrupt gzip"):  # now the junk cache is used
        load_fashion_mnist(root=str(incomplete_root), cache_dir=str(cache), download=False)


def test_checksum_mismatch_names_the_file(tmp_path, fake):
    modified = dict(fake)
    labels = bytearray(modified["train-labels-idx1-ubyte.gz"])
    labels[-1] = (labels[-1] + 1) % 10
    modified["train-labels-idx1-ubyte.gz"] = bytes(labels)
    root = populate(tmp_path / "root", modified)
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_fashion_mnist(root=str(root), cache_dir=str(tmp_path / "cache"), download=False)
    assert str(root / "train-labels-idx1-ubyte.gz") in str(info.value)


def test_accepts_official_gz_md5_alone(tmp_path, fake, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    for name, payload in fake.items():
        (root / name).write_bytes(gzip.compress(payload, mtime=0))
        monkeypatch.setitem(fm.PAYLOAD_SHA256, name, "0" * 64)
    assert (
        len(load_fashion_mnist(root=str(root), cache_dir=str(tmp_path), download=False).test_labels)
        == 10
    )


def test_nothing_found_without_download(tmp_path, fake):
    with pytest.raises(DataError) as info:
        load_fashion_mnist(root=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"), download=False)
    message = str(info.value)
    for part in (
        "download is disabled",
        str(tmp_path / "r"),
        str(tmp_path / "no-system"),
        str(tmp_path / "c" / "fashion-mnist"),
        "apt-get install dataset-fashion-mnist",
        "data.root",
    ):
        assert part in message


class FakeResponse:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_into_cache(tmp_path, fake, monkeypatch):
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        return FakeResponse(gzip.compress(fake[url.rsplit("/", 1)[1]], mtime=0))

    monkeypatch.setattr(fm.urllib.request, "urlopen", urlopen)
    ds = load_fashion_mnist(cache_dir=str(tmp_path / "c"), download=True)
    assert len(ds.train_labels) == 20
    assert sorted(urls) == sorted(fm.MIRROR + name for name in FILES)
    assert sorted(p.name for p in (tmp_path / "c" / "fashion-mnist").iterdir()) == sorted(FILES)


def test_download_failure_and_bad_md5(tmp_path, fake, monkeypatch):
    def unreachable(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(fm.urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError, match="no route to host") as info:
        load_fashion_mnist(cache_dir=str(tmp_path / "c"), download=True)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)

    monkeypatch.setattr(
        fm.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"tampered")
    )
    with pytest.raises(DataError, match="downloaded file has md5"):
        load_fashion_mnist(cache_dir=str(tmp_path / "c"), download=True)
    assert list((tmp_path / "c" / "fashion-mnist").iterdir()) == []  # no partial or bad file left

    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.raises(DataError, match="into .*file-not-dir/fashion-mnist failed"):
        load_fashion_mnist(cache_dir=str(blocker), download=True)


needs_debian = pytest.mark.skipif(
    not all((fm.SYSTEM_DIR / name).is_file() for name in FILES),
    reason="dataset-fashion-mnist not installed",
)


@needs_debian
def test_debian_files_load(tmp_path):
    ds = load_fashion_mnist(cache_dir=str(tmp_path), download=False)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (
        10000,
        1,
        28,
        28,
    )
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert (ds.in_channels, ds.image_size) == (1, 28)


@needs_debian
def test_debian_copy_with_one_changed_label_is_rejected(tmp_path):
    for name in FILES:
        (tmp_path / name).symlink_to(fm.SYSTEM_DIR / name)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(target.read_bytes()))
    payload[8] = (payload[8] + 1) % 10
    target.unlink()
    write_gz(target, bytes(payload))
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_fashion_mnist(root=str(tmp_path), cache_dir=str(tmp_path / "c"), download=False)
    assert str(target) in str(info.value)
    shutil.copy(fm.SYSTEM_DIR / target.name, target)  # the untouched copy is accepted again
    assert (
        len(
            load_fashion_mnist(
                root=str(tmp_path), cache_dir=str(tmp_path / "c"), download=False
            ).test_labels
        )
        == 10000
    )
