"""Site data on disk: round trip, and each kind of bad file fails with the file and the problem
named; site-to-client-id assignment; SuperLink-made error replies; run settings checked before a
run is submitted."""

import numpy as np
import pytest
from flwr.app import Error, MessageType, Metadata
from flwr.app.message.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID

from fedlabel.data import DataError, load_site, save_site
from fedlabel.deploy import DeployError, run_config_file
from fedlabel.errors import ConfigError
from fedlabel.faults import CRASHED, TIMEOUT
from server.server_app import assign_client_ids, collect_replies

pytestmark = pytest.mark.slow

SHAPE = dict(in_channels=1, image_size=8, num_classes=3)


def _write(tmp_path, *, x=None, y=None, u=None):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8) if x is None else x
    y = np.array([0, 1, 2, 1, 0]) if y is None else y
    u = rng.integers(0, 256, (7, 1, 8, 8), dtype=np.uint8) if u is None else u
    return save_site(tmp_path / "site", labeled_images=x, labeled_labels=y, unlabeled_images=u)


def test_round_trip(tmp_path):
    site = load_site(_write(tmp_path), client_id=4, **SHAPE)
    assert site.client_id == 4 and site.unlabeled_true_labels is None
    assert tuple(site.labeled_images.shape) == (5, 1, 8, 8) and site.labeled_labels.tolist() == [
        0,
        1,
        2,
        1,
        0,
    ]
    assert tuple(site.unlabeled_images.shape) == (7, 1, 8, 8)


def test_unlabeled_file_is_optional(tmp_path):
    root = _write(tmp_path)
    (root / "unlabeled.npz").unlink()
    assert load_site(root, **SHAPE).num_unlabeled == 0


@pytest.mark.parametrize(
    ("kwargs", "file", "problem"),
    [
        (dict(x=np.zeros((5, 8, 8), np.float32)), "labeled.npz", "x must be uint8"),
        (dict(x=np.zeros((5, 3, 8, 8), np.uint8)), "labeled.npz", "3 channel(s)"),
        (dict(x=np.zeros((5, 9, 9), np.uint8)), "labeled.npz", "images are 9 x 9"),
        (dict(y=np.array([0, 1, 2, 3, 0])), "labeled.npz", "outside [0, 3)"),
        (dict(y=np.array([0.0, 1, 2, 1, 0])), "labeled.npz", "integer class labels"),
        (dict(y=np.array([0, 1, 2])), "labeled.npz", "shape (5,)"),
        (dict(u=np.zeros((7, 2, 8, 8), np.uint8)), "unlabeled.npz", "2 channel(s)"),
        (dict(u=np.zeros((7, 8), np.uint8)), "unlabeled.npz", "N x H x W or N x C x H x W"),
    ],
)
def test_bad_files_are_named(tmp_path, kwargs, file, problem):
    root = _write(tmp_path, **kwargs)
    with pytest.raises(DataError) as err:
        load_site(root, **SHAPE)
    assert str(root / file) in str(err.value) and problem in str(err.value)


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="site directory is missing"):
        load_site(tmp_path / "nowhere", **SHAPE)
    root = _write(tmp_path)
    (root / "labeled.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="labeled.npz: not a valid .npz"):
        load_site(root, **SHAPE)
    (root / "labeled.npz").unlink()
    with pytest.raises(DataError, match="labeled.npz: file is missing"):
        load_site(root, **SHAPE)
    np.savez(root / "labeled.npz", images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="missing key.s. x, y; found images"):
        load_site(root, **SHAPE)


def test_client_ids_follow_site_names_not_connection_order():
    assert assign_client_ids({70: "b", 12: "c", 99: "a"}) == {0: 99, 1: 70, 2: 12}
    with pytest.raises(RuntimeError, match="same site name 'a'"):
        assign_client_ids({1: "a", 2: "a"})


def test_run_settings_are_checked_before_submission(tmp_path):
    path = tmp_path / "run.toml"
    run_config_file(
        sites=2, output_dir="/out", overrides=["clients_per_round=2", "rounds=3"], path=path
    )
    assert "rounds = 3" in path.read_text() and "num_clients = 2" in path.read_text()
    with pytest.raises(ConfigError, match="clients_per_round"):
        run_config_file(sites=2, output_dir="/out", overrides=[], path=path)  # default 10 > 2 sites
    with pytest.raises(DeployError, match="absolute"):
        run_config_file(sites=2, output_dir="out", overrides=["clients_per_round=2"], path=path)
    with pytest.raises(DeployError, match="roundz"):
        run_config_file(sites=2, output_dir="/out", overrides=["roundz=3"], path=path)


def test_superlink_error_replies_are_attributed_to_the_site_they_replace():
    """A SuperNode whose heartbeats stopped gets a "Node Unavailable" error reply written by the
    SuperLink (source: the SuperLink, not the node); it counts as that site's failure."""
    meta = Metadata(
        run_id=1,
        message_id="",
        src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id="to-site-1",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    unavailable = make_message(meta, error=Error(code=5, reason="Error: Node Unavailable"))
    results = collect_replies(
        [unavailable],
        [0, 1],
        {0: 100, 1: 101},
        deadline_s=30.0,
        sent={"to-site-0": 0, "to-site-1": 1},
    )
    assert sorted((r.client_id, r.reason) for r in results) == [(0, TIMEOUT), (1, CRASHED)]
