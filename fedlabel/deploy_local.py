"""A whole deployment on 127.0.0.1 for tests and measurements: the server side (SuperLink behind
nginx) and one SuperNode per site, each started with the same `fedlabel deploy` commands an
operator runs (TLS on every connection, only registered keys admitted, the admin's credential
and app signature, sites that trust the admin's signing key). Every process started here is ended by
PID, with its descendants (Flower starts some in sessions of their own), by :meth:`stop`."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fedlabel import deploy
from fedlabel.engines.flower import free_port

ROOT = Path(__file__).resolve().parents[1]
FEDLABEL = str(Path(sys.executable).parent / "fedlabel")


def descendants(pid: int) -> list[int]:
    """All descendants of pid, from /proc."""
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


def kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End a process we started and all its descendants (SIGKILL after 15 s)."""
    pids = [proc.pid, *descendants(proc.pid)]
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


class LocalFederation:
    """work/ holds certs/, one directory per site (written by the caller), logs and homes."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self.env = deploy.flower_env({**os.environ, "FLWR_HOME": str(self.work / "admin")})
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"  # nginx: what sites, the admin and outsiders reach
        self.local_address = (  # the SuperLink itself: only the server machine
            f"127.0.0.1:{free_port()}"
        )
        self.certs = self.work / "certs"
        self.node_ids: dict[str, int] = {}

    def make_certs(self, sites: int) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "make-certs.sh"), str(self.certs), str(sites)],
            check=True,
            capture_output=True,
        )

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**self.env, "FLWR_HOME": str(self.work / f"home-{name}")}
        with open(self.work / f"{name}.log", "w") as log:
            proc = subprocess.Popen(
                [FEDLABEL, "deploy", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def start_server(self, timeout: float = 120) -> None:
        """Start the SuperLink, wait until it answers over TLS, point the admin flwr CLI at it."""
        proc = self._start(
            "superlink",
            [
                "server",
                "--certs",
                str(self.certs),
                "--state",
                str(self.work / "state"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--local-port",
                self.local_address.rsplit(":", 1)[1],
            ],
        )
        deploy.write_connection(
            superlink=self.address,
            ca=self.certs / "ca.crt",
            cert=self.certs / "admin.pem",
            key=self.certs / "admin.key",
            sign_key=self.certs / "admin-sign.key",
            env=self.env,
        )
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    "SuperLink exited with code"
                    f" {proc.returncode}:\n{self.log('superlink')[-2000:]}"
                )
            try:
                with urllib.request.urlopen(
                    f"https://{self.address}/health", timeout=1, context=context
                ):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(
            f"SuperLink not healthy within {timeout} s:\n{self.log('superlink')[-2000:]}"
        )

    def register(self, site: str) -> int:
        self.node_ids[site] = deploy.register(self.certs / f"{site}.key.pub", env=self.env)
        return self.node_ids[site]

    def join(self, site: str, *, key: str = "", data: str = "") -> subprocess.Popen:
        """Start site's SuperNode with certs/<key or site>.key and the data directory work/<data or
        site>."""
        return self._start(
            site,
            [
                "join",
                "--superlink",
                self.address,
                "--ca",
                str(self.certs / "ca.crt"),
                "--key",
                str(self.certs / f"{key or site}.key"),
                "--site-dir",
                str(self.work / (data or site)),
                "--trust",
                str(self.certs / "admin-sign.key.pub"),
                "--port",
                str(free_port()),
            ],
        )

    def wait_online(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = deploy.list_sites(env=self.env)
            if sum(n["status"] == "online" for n in nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fewer than {count} SuperNodes online after {timeout} s: {nodes}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            kill(proc)
