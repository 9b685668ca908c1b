"""Ray nodes started as processes on 127.0.0.1 for tests that join engine=flower to a running
cluster (engine.ray_address) instead of letting each run start its own Ray.

Only the processes started here are ended: each `ray start --block` runs under a reaper
(fedlabel.engines.reaper) in its own session, so its node (GCS, raylet, agents, workers) ends when
the test stops it and also when pytest itself dies (SIGTERM, SIGKILL, a timeout); anything left in
that session is then killed by PID. `ray stop` is never used: it would end every Ray process of
the user."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedlabel.engines.flower import free_port
from fedlabel.engines.reaper import reaped

RAY = Path(sys.executable).parent / "ray"


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    return env


def start_node(temp_dir: str, log: Path, *extra: str, num_cpus: int = 1) -> subprocess.Popen:
    """`ray start --block` for one node with num_cpus CPUs; extra: --head ... or --address ..."""
    ports = [
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ]
    args = [
        str(RAY),
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(100 * 2**20),
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
        "--include-log-monitor",
        "false",
        *extra,
    ]
    for flag in ports:
        args += [flag, str(free_port())]
    with open(log, "w") as out:
        return subprocess.Popen(
            reaped(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ray_env(),
            start_new_session=True,
        )


def head_args(address: str) -> list[str]:
    """The extra `ray start` arguments of a head node listening on address (127.0.0.1:port)."""
    return [
        "--head",
        "--port",
        address.split(":")[1],
        "--include-dashboard",
        "false",
        "--ray-client-server-port",
        str(free_port()),
    ]


def _session_members(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[4]) == sid:  # field 6: session id
                pids.append(int(entry.name))
    return pids


def stop_node(proc: subprocess.Popen) -> None:
    """End a node we started: SIGTERM to its session's process group (its reaper then ends the
    node's processes), then SIGKILL whatever is left in its session."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _session_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
