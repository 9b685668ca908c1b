"""engine=flower joined to a running multi-node Ray cluster (engine.ray_address): a Ray head and a
second Ray node, each with one CPU, started here as processes on 127.0.0.1 (tests.ray_nodes.py)."""

import json
import subprocess
import sys
import tempfile
import threading

import pytest

import fedlabel
from fedlabel.config import config_from_dict, validate
from fedlabel.engines.flower import free_port
from fedlabel.errors import ConfigError
from tests.engines.conftest import tiny_config
from tests.ray_nodes import RAY, head_args, ray_env, start_node, stop_node

pytestmark = pytest.mark.slow

TEST_LIMIT_S = 110  # the nodes are stopped then, which fails a run still going

# Run as a Ray driver in a subprocess (this test process never joins the cluster). It prints the
# alive nodes and, for every ClientAppActor.run task the cluster has a record of, the node that
# ran it (task events kept by the GCS; read through Ray's state accessor, as `ray.timeline` does,
# since no dashboard runs here).
PROBE = """
import json, sys, time
import ray
from ray._private.state import state
from ray.core.generated import gcs_pb2

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while True:
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    if len(nodes) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
ran = []
for raw in state._connect_and_get_accessor().get_task_events():
    event = gcs_pb2.TaskEvents.FromString(raw)
    name = event.task_info.func_or_class_name
    if name.endswith("ClientAppActor.run") and event.state_updates.node_id:
        ran.append(event.state_updates.node_id.hex())
print(json.dumps({"nodes": nodes, "client_tasks_on": ran}))
"""


def _probe(address: str, want_nodes: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, address, str(want_nodes)],
        capture_output=True,
        text=True,
        timeout=90,
        env=ray_env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster(tmp_path):
    if not RAY.is_file():
        pytest.skip(f"Ray's command-line tool is not installed at {RAY}")
    temp_dir = tempfile.mkdtemp(
        prefix="fl-ray-", dir="/tmp"
    )  # short: Ray's socket paths live in it
    address = f"127.0.0.1:{free_port()}"
    nodes = []
    try:
        nodes.append(start_node(temp_dir, tmp_path / "ray-head.log", *head_args(address)))
        nodes.append(start_node(temp_dir, tmp_path / "ray-worker.log", "--address", address))
        try:
            probe = _probe(address, 2)
        except (AssertionError, subprocess.TimeoutExpired) as err:
            logs = "\n".join(
                (tmp_path / f).read_text(errors="replace")[-1500:]
                for f in ("ray-head.log", "ray-worker.log")
            )
            pytest.skip(f"could not start a two-node Ray cluster on 127.0.0.1 here: {err}\n{logs}")
        assert len(probe["nodes"]) == 2, f"expected 2 alive Ray nodes, got {probe['nodes']}"
        yield address, nodes
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def test_flower_engine_runs_clients_on_both_ray_nodes(tmp_path, two_node_cluster):
    address, nodes = two_node_cluster
    cfg = tiny_config(tmp_path, engine="flower", overrides=[f"engine.ray_address={address}"])
    # A hung run is bounded: stopping the nodes makes the Flower run fail, and fedlabel.run raise.
    watchdog = threading.Timer(TEST_LIMIT_S, lambda: [stop_node(p) for p in nodes])
    watchdog.start()
    try:
        summary = fedlabel.run(cfg, progress=False)
    finally:
        watchdog.cancel()
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    ran = _probe(address, 2)
    # Each node has one CPU and each client needs one, so Flower's actor pool has one actor per
    # node; the cluster's own task records show client work on both.
    assert set(ran["client_tasks_on"]) == set(ran["nodes"]), ran


@pytest.mark.parametrize("address", ["ray://10.0.0.1:10001", "10.0.0.1", "10.0.0.1:port", ":6379"])
def test_bad_ray_address_is_a_config_error(tmp_path, address):
    cfg = tiny_config(tmp_path, engine="flower", overrides=[f"engine.ray_address='{address}'"])
    with pytest.raises(ConfigError, match="engine.ray_address"):
        validate(config_from_dict(cfg))
