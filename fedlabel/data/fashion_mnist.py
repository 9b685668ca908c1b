"""Fashion-MNIST from its four IDX gzip files: local search, optional download, checksums."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from fedlabel.data.dataset import ImageDataset
from fedlabel.data.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# md5 of the official .gz files (zalandoresearch/fashion-mnist README).
GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# sha256 of the decompressed IDX payloads, computed from Debian's dataset-fashion-mnist, which
# recompressed the files (so their .gz md5 differs from the official one).
PAYLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train-labels-idx1-ubyte.gz": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# The official S3 website endpoint serves plain http only; integrity comes from GZ_MD5.
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_NDIM = {0x00000801: 1, 0x00000803: 3}  # magic (unsigned-byte payload) -> number of dims


def _read_gz(path: Path) -> tuple[bytes, bytes]:
    """(raw .gz bytes, decompressed payload)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{path}: file is missing") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err})") from err
    if not raw:
        raise DataError(f"{path}: file is empty")
    try:
        return raw, gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: truncated or corrupt gzip ({err})") from err


def _parse_idx(path: Path, payload: bytes) -> np.ndarray:
    if len(payload) < 4:
        raise DataError(f"{path}: IDX header truncated ({len(payload)} bytes)")
    magic = int.from_bytes(payload[:4], "big")
    if magic not in _IDX_NDIM:
        raise DataError(
            f"{path}: wrong IDX magic 0x{magic:08x}; expected 0x00000803 (images) or 0x00000801"
            " (labels)"
        )
    ndim = _IDX_NDIM[magic]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{path}: IDX header truncated ({len(payload)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    size = math.prod(dims)
    if len(payload) - header != size:
        raise DataError(
            f"{path}: IDX payload has {len(payload) - header} bytes but dims {dims} need {size}"
        )
    return np.frombuffer(payload, np.uint8, size, header).reshape(dims).copy()


def read_idx(path: str | Path) -> np.ndarray:
    """Parse a gzipped unsigned-byte IDX file (labels 0x801 or images 0x803) into a uint8 array."""
    path = Path(path)
    return _parse_idx(path, _read_gz(path)[1])


def _read_verified(path: Path) -> np.ndarray:
    raw, payload = _read_gz(path)
    if (
        hashlib.md5(raw, usedforsecurity=False).hexdigest() != GZ_MD5[path.name]
        and hashlib.sha256(payload).hexdigest() != PAYLOAD_SHA256[path.name]
    ):
        raise DataError(
            f"{path}: checksum mismatch, this is not the official {path.name} "
            "(neither the .gz md5 nor the decompressed sha256 matches); delete or replace it"
        )
    return _parse_idx(path, payload)


def _not_found(searched: list[Path], reason: str) -> str:
    return (
        f"Fashion-MNIST not found: no directory holds all of {', '.join(FILES.values())} (searched"
        f" {', '.join(map(str, searched))}) and {reason}. Fix: `apt-get install"
        " dataset-fashion-mnist`, set data.root to a directory with the four files, or allow"
        " data.download."
    )


def _fetch(url: str, target: Path) -> None:
    """Download url via a temporary file in target's directory, renamed to target once its md5 is
    right."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        md5 = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                md5.update(chunk)
                out.write(chunk)
        if md5.hexdigest() != GZ_MD5[target.name]:
            raise DataError(
                f"{url}: downloaded file has md5 {md5.hexdigest()}, expected {GZ_MD5[target.name]}"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _download(cache: Path, searched: list[Path]) -> None:
    """Fetch the files missing from cache."""
    for fname in FILES.values():
        if (cache / fname).is_file():
            continue
        try:
            cache.mkdir(parents=True, exist_ok=True)
            _fetch(MIRROR + fname, cache / fname)
        except (OSError, http.client.HTTPException) as err:
            raise DataError(
                _not_found(searched, f"downloading {MIRROR + fname} into {cache} failed ({err})")
            ) from err


def load_fashion_mnist(
    *, root: str = "", cache_dir: str = "~/.cache/fedlabel", download: bool = True
) -> ImageDataset:
    """Load Fashion-MNIST from the first of root, SYSTEM_DIR, <cache_dir>/fashion-mnist holding all
    four files.

    If none does, download into <cache_dir>/fashion-mnist (when allowed). Every file is checksummed.
    """
    cache = Path(cache_dir).expanduser() / "fashion-mnist"
    searched = ([Path(root).expanduser()] if root else []) + [SYSTEM_DIR, cache]
    directory = next((d for d in searched if all((d / f).is_file() for f in FILES.values())), None)
    if directory is None:
        if not download:
            raise DataError(_not_found(searched, "download is disabled"))
        _download(cache, searched)
        directory = cache
    arrays = {
        key: torch.from_numpy(_read_verified(directory / fname)) for key, fname in FILES.items()
    }
    try:
        return ImageDataset(
            name="fashion_mnist",
            train_images=arrays["train_images"].unsqueeze(1),
            train_labels=arrays["train_labels"].long(),
            test_images=arrays["test_images"].unsqueeze(1),
            test_labels=arrays["test_labels"].long(),
            num_classes=10,
        )
    except DataError as err:
        raise DataError(f"{directory}: {err}") from err
