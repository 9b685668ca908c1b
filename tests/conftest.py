"""Fixtures shared by test folders."""

import os
import subprocess
import tempfile
import time

import pytest

from fedlabel.engines.flower import free_port
from tests.ray_nodes import RAY, head_args, start_node, stop_node


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (they start Flower, Ray or deployment processes, or whole runs) go
    first: under pytest-xdist (scripts/test.sh) the workers then end together instead of one
    finishing a long test alone. The order within each group stays as collected."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory):
    """`engine.ray_address=...` of one local Ray head (all CPUs, as a run's private Ray gets),
    started once per session: Flower runs that join it skip starting their own Ray. Tests of
    the default path (a run's private Ray: faults, signals, resume) do not use it."""
    if not RAY.is_file():
        pytest.skip(f"Ray's command-line tool is not installed at {RAY}")
    temp_dir = tempfile.mkdtemp(
        prefix="fl-ray-", dir="/tmp"
    )  # short: Ray's socket paths live in it
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("shared-ray") / "ray-head.log"
    head = start_node(temp_dir, log, *head_args(address), num_cpus=os.cpu_count() or 1)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the shared Ray head did not start; see {log}")
            time.sleep(0.2)
        yield f"engine.ray_address={address}"
    finally:
        stop_node(head)
        subprocess.run(["rm", "-rf", temp_dir], check=False)
