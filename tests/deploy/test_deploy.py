"""A real deployment on 127.0.0.1: one SuperLink and SuperNodes as separate processes, TLS on
every connection, only registered SuperNode keys admitted, started with the `fedlabel deploy`
commands an operator runs. Success is read from the run's final state in `flwr ls`, never from an
exit code. Every process started here is ended by PID (with its descendants) in a finally."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedlabel import deploy
from fedlabel.config import default_run_config
from fedlabel.data import DataError, load_fashion_mnist
from fedlabel.engines.flower import free_port

ROOT = Path(__file__).resolve().parents[2]
FEDLABEL = str(Path(sys.executable).parent / "fedlabel")
RUN_TIMEOUT_S = 150
# Tiny but real: 200 Fashion-MNIST images per site (20 labeled), 300 test images on the server.
RUN_SETTINGS = ["clients_per_round=2", "algorithm.local_steps=2", "algorithm.unlabeled_steps=2",
                "algorithm.batch_size=16", "device='cpu'", "data.name='npz'"]  # fmt: skip


def _children(pid: int) -> list[int]:
    """All descendants of pid (Flower starts some in sessions of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End a process we started, its process group and all its descendants."""
    pids = [proc.pid, *_children(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class Federation:
    def __init__(self, work: Path):
        self.work = work
        self.env = deploy.flower_env({**os.environ, "FLWR_HOME": str(work / "admin")})
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs = work / "certs"

    def start(self, name: str, args: list[str], *, home: Path) -> subprocess.Popen:
        env = {**self.env, "FLWR_HOME": str(home)}
        with open(self.work / f"{name}.log", "w") as log:
            proc = subprocess.Popen([FEDLABEL, "deploy", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.work, start_new_session=True)  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60) -> None:
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.procs["superlink"].poll() is None, self.log("superlink")
            try:
                with urllib.request.urlopen(f"https://{self.address}/health", timeout=1, context=context):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"SuperLink not healthy within {timeout} s:\n{self.log('superlink')[-2000:]}")

    def join(self, site: str, key: str, data: str = "") -> subprocess.Popen:
        return self.start(site, ["join", "--superlink", self.address, "--ca", str(self.certs / "ca.crt"),
                                 "--key", str(self.certs / key), "--site-dir", str(self.work / (data or site)),
                                 "--port", str(free_port())], home=self.work / f"home-{site}")  # fmt: skip

    def wait_online(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = deploy.list_sites(env=self.env)
            if sum(n["status"] == "online" for n in nodes) >= count:
                return nodes
            time.sleep(0.5)
        raise AssertionError(f"fewer than {count} SuperNodes online: {nodes}")

    def submit(self, name: str, *overrides: str) -> int:
        return deploy.submit(sites=2, output_dir=str(self.work / name), env=self.env,
                             overrides=[*RUN_SETTINGS, f"data.root='{self.work / 'test.npz'}'", *overrides])  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            _kill(proc)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    work = tmp_path_factory.mktemp("deploy")
    fed = Federation(work)
    subprocess.run(["bash", str(ROOT / "scripts" / "make-certs.sh"), str(fed.certs), "3"], check=True, capture_output=True)
    deploy.demo_sites(work, sites=2, per_site=200, label_ratio=0.1, test_samples=300)
    try:
        fed.start("superlink", ["server", "--certs", str(fed.certs), "--state", str(work / "state"),
                                "--host", "127.0.0.1", "--port", str(fed.port)], home=work / "home-superlink")  # fmt: skip
        deploy.write_connection(superlink=fed.address, ca=fed.certs / "ca.crt", env=fed.env)
        fed.wait_healthy()
        fed.node_ids = {site: deploy.register(fed.certs / f"{site}.key.pub", env=fed.env) for site in ("site1", "site2")}
        fed.join("site1", "site1.key")
        fed.join("site2", "site2.key")
        fed.wait_online(2)
        yield fed
    finally:
        fed.stop()


def test_two_sites_complete_a_tls_authenticated_run(federation):
    run_id = federation.submit("run", "rounds=2")
    state = deploy.wait_run(run_id, timeout=RUN_TIMEOUT_S, env=federation.env)
    assert state["status"] == "finished:completed", federation.log("superlink")[-3000:]
    summary = json.loads((federation.work / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [(r["round"], r["clients"]) for r in summary["rounds"]] == [(1, 2), (2, 2)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in summary["rounds"])
    clients = json.loads((federation.work / "run" / "clients.json").read_text())
    assert [(c["client_id"], c["site"], c["num_labeled"], c["num_unlabeled"]) for c in clients] == [
        (0, "site1", 20, 180), (1, "site2", 20, 180)]  # fmt: skip
    # TLS: the SuperLink served HTTPS only; the certificate is the one make-certs.sh signed
    assert f"Uvicorn running on https://{federation.address}" in federation.log("superlink")


def test_unregistered_key_is_refused(federation):
    proc = federation.join("site3", "site3.key", data="site1")  # a key pair that was never registered
    try:
        proc.wait(timeout=60)
    finally:
        _kill(proc)
    assert proc.returncode != 0
    assert "Failed to activate SuperNode" in federation.log("site3")
    nodes = deploy.list_sites(env=federation.env)
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(federation.node_ids.values())


FAULTS = "faults.round_deadline_s" in default_run_config()


def test_site_killed_in_round_one_does_not_stop_the_run(federation):
    """site2 is killed (SIGKILL, with its ClientApp) once it has received its round-1 train
    message. With the reliability work (faults.* settings) the round ends at its deadline with
    site1 alone; without it, Flower reports site2 unavailable once its heartbeats stop (<= 60 s)
    and the round ends then. Either way the run completes with site1."""
    faults = ["faults.round_deadline_s=15", "faults.min_clients=1"] if FAULTS else []
    offset = len(federation.log("site2"))
    run_id = federation.submit("killed", "rounds=2", *faults)
    deadline = time.monotonic() + 60
    while "Receiving: train message" not in federation.log("site2")[offset:]:
        assert time.monotonic() < deadline, "site2 never received its round-1 train message"
        time.sleep(0.2)
    _kill(federation.procs["site2"], signal.SIGKILL)
    state = deploy.wait_run(run_id, timeout=RUN_TIMEOUT_S, env=federation.env)
    assert state["status"] == "finished:completed", federation.log("superlink")[-3000:]
    summary = json.loads((federation.work / "killed" / "summary.json").read_text())
    assert [(r["round"], r["clients"]) for r in summary["rounds"]] == [(1, 1), (2, 1)]
