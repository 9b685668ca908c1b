"""Property-based tests: malformed data files and configs end in a DataError or ConfigError
naming the problem (or load fine), never another exception, a hang or a torch traceback."""

import gzip
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedlabel.config import Config, ConfigError, config_from_dict
from fedlabel.data import DataError, ImageDataset, load_fashion_mnist, load_npz
from fedlabel.data.fashion_mnist import FILES, read_idx
from fedlabel.federation import initial_model, load_federated

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(tmp_path_factory, name: str, raw: bytes):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(raw)
    return path


def _idx(magic: int, dims: list[int], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


# --- IDX gzip files (Fashion-MNIST) ----------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=200))
def test_idx_random_bytes(tmp_path_factory, raw):
    with pytest.raises(DataError, match=r"idx\.gz: (file is empty|truncated or corrupt gzip)"):
        read_idx(_write(tmp_path_factory, "x.idx.gz", raw))


@FUZZ
@given(
    magic=st.sampled_from([0x801, 0x803, 0x802, 0x0D03, 0, 0xFFFFFFFF]),
    dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), max_size=4),
    payload=st.binary(max_size=300),
    cut=st.none() | st.integers(0, 400),
)
def test_idx_malformed_headers_and_truncation(tmp_path_factory, magic, dims, payload, cut):
    raw = gzip.compress(_idx(magic, dims, payload))
    if cut is not None:
        raw = raw[:cut]
    try:
        array = read_idx(_write(tmp_path_factory, "x.idx.gz", raw))
    except DataError as err:
        assert "x.idx.gz" in str(err)
    else:  # a well-formed file: the header said exactly this
        assert magic in (0x801, 0x803) and array.dtype == np.uint8
        assert list(array.shape) == dims[: {0x801: 1, 0x803: 3}[magic]]


def test_idx_wrong_magic_is_named(tmp_path_factory):
    raw = gzip.compress(_idx(0x0D03, [1, 2, 2], bytes(4)))
    with pytest.raises(DataError, match="wrong IDX magic 0x00000d03"):
        read_idx(_write(tmp_path_factory, "x.idx.gz", raw))


def test_fashion_mnist_directory_of_bad_files(tmp_path):
    for i, name in enumerate(FILES.values()):
        (tmp_path / name).write_bytes(
            [b"", b"junk", gzip.compress(b"\x00\x00\x08\x03"), gzip.compress(bytes(100))[:20]][i]
        )
    with pytest.raises(DataError, match=str(tmp_path)):
        load_fashion_mnist(root=str(tmp_path), download=False)


# --- .npz archives ---------------------------------------------------------------------------

KEYS = ["train_images", "train_labels", "test_images", "test_labels"]
ARRAYS = hnp.arrays(
    dtype=st.sampled_from(
        [np.uint8, np.float32, np.float64, np.int64, np.int32, np.bool_, np.uint64]
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)


@st.composite
def npz_contents(draw):
    keys = draw(
        st.lists(
            st.sampled_from([*KEYS, "x", "y", "val_images"]), unique=True, min_size=0, max_size=6
        )
    )
    return {k: draw(ARRAYS) for k in keys}


def _check_loadable(dataset: ImageDataset, num_clients: int):
    """A dataset that loaded must also partition and fit the model, or fail with DataError."""
    cfg = config_from_dict(
        {
            "data": {
                "name": "npz",
                "root": "x.npz",
                "num_clients": num_clients,
                "partition": "iid",
                "min_client_size": 1,
            },
            "clients_per_round": 1,
            "model": {"name": "cnn"},
        }
    )
    try:
        fed = load_federated(cfg, dataset)
        initial_model(
            cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size
        )
    except DataError:
        pass


@FUZZ
@given(contents=npz_contents(), num_clients=st.integers(1, 4))
def test_npz_random_archives(tmp_path_factory, contents, num_clients):
    path = tmp_path_factory.mktemp("fuzz") / "data.npz"
    np.savez(path, **contents)
    try:
        dataset = load_npz(str(path))
    except DataError as err:
        assert "data.npz" in str(err)
    else:
        _check_loadable(dataset, num_clients)


@FUZZ
@given(
    n=st.integers(1, 6),
    side=st.sampled_from([4, 8]),
    pixels=st.floats(allow_nan=True, allow_infinity=True, width=32),
    label=st.integers(-3, 2**40),
)
def test_npz_bad_values(tmp_path_factory, n, side, pixels, label):
    """Float images with NaN/Inf/out-of-range pixels and labels out of range."""
    images = np.full((n, side, side), pixels, np.float32)
    labels = np.full(n, label, np.int64)
    path = tmp_path_factory.mktemp("fuzz") / "data.npz"
    np.savez(path, train_images=images, train_labels=labels, test_images=images, test_labels=labels)
    if np.isfinite(pixels) and 0 <= pixels <= 1 and 0 <= label < 10_000:
        _check_loadable(load_npz(str(path)), 1)
    else:
        with pytest.raises(
            DataError, match=r"NaN|must lie in \[0, 1\]|negative labels|class indices below"
        ):
            load_npz(str(path))


@FUZZ
@given(raw=st.binary(max_size=300), cut=st.integers(0, 2000))
def test_npz_garbage_and_truncated_files(tmp_path_factory, raw, cut):
    good = tmp_path_factory.mktemp("fuzz") / "good.npz"
    np.savez(good, **{k: np.zeros((2, 4, 4) if "images" in k else 2, np.uint8) for k in KEYS})
    for data in (raw, good.read_bytes()[:cut]):
        path = _write(tmp_path_factory, "bad.npz", data)
        try:
            load_npz(str(path))
        except DataError as err:
            assert "bad.npz" in str(err)


def test_npz_wrong_keys_and_empty_file(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="missing key.*train_images.*found x, y"):
        load_npz(str(path))
    path.write_bytes(b"")
    with pytest.raises(DataError, match="not a valid .npz"):
        load_npz(str(path))


# --- configs ---------------------------------------------------------------------------------

VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2)
)
FIELDS = [
    "rounds",
    "clients_per_round",
    "seed",
    "device",
    "eval_every",
    "eval_last",
    "output_dir",
    "checkpoint_every",
    "resume",
    "data.name",
    "data.num_clients",
    "data.partition",
    "data.alpha",
    "data.label_ratio",
    "data.min_client_size",
    "data.train_samples",
    "data.labeled_class_alpha",
    "data.colour",
    "model.name",
    "engine.name",
    "engine.num_cpus_per_client",
    "engine.superlink_port",
    "faults.crash_prob",
    "faults.dropout_prob",
    "faults.straggler_prob",
    "faults.round_deadline_s",
    "faults.min_clients",
    "faults.max_update_norm",
    "algorithm.name",
    "algorithm.lr",
    "algorithm.batch_size",
    "algorithm.beta",
    "algorithm.confidence",
    "faults",
    "data",
    "unknown",
]


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(FIELDS),
        VALUES | st.sampled_from([0, 1, 0.5, "iid", "cnn", "fedavg"]),
        max_size=6,
    )
)
def test_random_configs_are_valid_or_name_the_field(overrides):
    nested: dict = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[leaf] = value
    try:
        cfg = config_from_dict(nested)
    except ConfigError as err:  # the message starts with the field's dotted name
        assert re.match(r"(unknown config key\(s\) |)[a-z_]+(\.[a-z_]+)*(:| must|,|$)", str(err)), (
            str(err)
        )
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=25, deadline=None)
@given(
    num_clients=st.integers(1, 60),
    partition=st.sampled_from(["iid", "dirichlet"]),
    alpha=st.floats(1e-3, 10),
    min_client_size=st.integers(1, 20),
    label_ratio=st.floats(0.01, 1),
    train_samples=st.integers(0, 50),
)
def test_valid_configs_on_small_data_load_or_raise_data_error(
    tmp_path_factory, num_clients, partition, alpha, min_client_size, label_ratio, train_samples
):
    path = tmp_path_factory.mktemp("fuzz") / "small.npz"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    np.savez(
        path,
        train_images=images,
        train_labels=np.arange(40) % 3,
        test_images=images[:5],
        test_labels=np.arange(5) % 3,
    )
    cfg = config_from_dict(
        {
            "data": {
                "name": "npz",
                "root": str(path),
                "num_clients": num_clients,
                "partition": partition,
                "alpha": alpha,
                "min_client_size": min_client_size,
                "label_ratio": label_ratio,
                "train_samples": train_samples,
            },
            "clients_per_round": 1,
        }
    )
    try:
        fed = load_federated(cfg)
    except DataError as err:
        assert "small" in str(err)
    else:
        assert len(fed.clients) == num_clients
