"""The Flower engine: our ServerApp and ClientApp on Flower's simulation runtime (Ray backend).

Started the way a user would: a private SuperLink on 127.0.0.1 (runtime dependency installation
disabled, so it never downloads packages), then ``flwr run <project> --stream``. Success is read
from ``flwr ls`` (``flwr run --stream`` exits 0 even when a run fails). Only the processes
started here are ended, by PID. With ``engine.ray_address`` the simulation runtime joins a
running Ray cluster instead of starting its own Ray (docs/performance.md, "Across machines").
This module drives Flower's command-line tools; it does not import flwr."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w
import torch
from tqdm import tqdm

from fedlabel.checkpoint import check_resumable, load_checkpoint
from fedlabel.config import Config, config_to_dict
from fedlabel.federation import load_dataset

CONNECTION = "fedlabel"
STARTUP_TIMEOUT_S = 60.0


class FlowerRunError(RuntimeError):
    """The Flower run did not complete; the message says where its logs are."""


def project_dir() -> Path:
    """The Flower app's project directory (holds pyproject.toml with [tool.flwr.app])."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "server" / "server_app.py").is_file():
        raise FlowerRunError(f"engine=flower needs the fedlabel source tree (pyproject.toml, server/, clients/); not found at {root}")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerRunError(f"flower-superlink exited with code {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise FlowerRunError(f"flower-superlink did not become healthy within {STARTUP_TIMEOUT_S:.0f} s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    """End a process we started, and its process group (Flower's simulation and Ray workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run_status(env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(["flwr", "ls", CONNECTION, "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
    try:
        return json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError as err:
        raise FlowerRunError(f"could not read `flwr ls` output: {out.stdout[-500:]} {out.stderr[-500:]}") from err


def run_flower(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run cfg on Flower's simulation engine; returns the ServerApp's summary.json."""
    load_dataset(cfg)  # fail here, with the data error, rather than inside the ServerApp
    if cfg.engine.num_gpus_per_client > 0 and not torch.cuda.is_available() and not cfg.engine.ray_address:
        raise FlowerRunError(
            f"engine.num_gpus_per_client={cfg.engine.num_gpus_per_client} but torch sees no GPU here "
            "(Ray would find no worker to place clients on); set it to 0"
        )
    out = Path(cfg.output_dir).resolve()
    run_config = config_to_dict(cfg)
    run_config["output_dir"] = str(out)
    if cfg.resume:  # the ServerApp checks again; failing here is faster and clearer
        check_resumable(load_checkpoint(out), run_config)
    work = out / "flower"
    (work / "home").mkdir(parents=True, exist_ok=True)
    port = cfg.engine.superlink_port or free_port()
    (work / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    (work / "run_config.toml").write_text(tomli_w.dumps(run_config))
    env = flower_env(work / "home")
    # Flower's Ray backend calls ray.init() without an address, so Ray reads RAY_ADDRESS: set,
    # the simulation joins that cluster; unset, it starts a private local Ray, as it always has.
    env.pop("RAY_ADDRESS", None)
    if cfg.engine.ray_address:
        env["RAY_ADDRESS"] = cfg.engine.ray_address
    superlink_log = work / "superlink.log"
    with open(superlink_log, "w") as log:
        superlink = subprocess.Popen(
            ["flower-superlink", "--insecure", "--simulation", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port), "--database", str(work / "state.db")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_healthy(superlink, port, superlink_log)
        e = cfg.engine
        federation = (
            f"num-supernodes={cfg.data.num_clients} client-resources-num-cpus={e.num_cpus_per_client} "
            f"client-resources-num-gpus={e.num_gpus_per_client}{_sleeper_workers(cfg)}"
        )
        run_log = work / "run.log"
        with open(run_log, "w") as log:
            runner = subprocess.Popen(
                ["flwr", "run", str(project_dir()), CONNECTION, "--run-config", str(work / "run_config.toml"),
                 "--federation-config", federation, "--stream"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            _follow(runner, out / "summary.json", cfg.rounds, progress)
        finally:
            _stop(runner)
        runs = run_status(env)
        statuses = [r.get("status", "") for r in runs]
        if not runs or statuses[-1] != "finished:completed":
            raise FlowerRunError(
                f"Flower run ended as {statuses[-1] if statuses else 'unknown'}; {_last_error(run_log)}"
                f"logs: {run_log}, {superlink_log}"
            )
    finally:
        _stop(superlink)
    return json.loads((out / "summary.json").read_text())


def _sleeper_workers(cfg: Config) -> str:
    """With injected dropouts or stragglers, give Ray a worker slot per cohort member: a client
    sleeping past the deadline must not hold back the others (in deployment every site is its
    own process); sleeping workers use no CPU. A joined Ray cluster keeps the CPUs its nodes
    were started with (Ray refuses num_cpus when connecting)."""
    if cfg.faults.dropout_prob + cfg.faults.straggler_prob == 0 or cfg.engine.ray_address:
        return ""
    slots = max(os.cpu_count() or 1, cfg.clients_per_round * cfg.engine.num_cpus_per_client)
    return f" init-args-num-cpus={slots}"


def _last_error(log: Path) -> str:
    """The last exception line of the run's log, if any, to put in the error message."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if "Error" in ln or "Exception" in ln]
    return f"last error: {lines[-1]}; " if lines else ""


def _follow(runner: subprocess.Popen, summary: Path, rounds: int, progress: bool) -> None:
    """Wait for `flwr run` to end, showing the rounds the ServerApp has written so far."""
    bar = tqdm(total=rounds, desc="rounds", unit="round", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    done = 0
    while True:
        finished = runner.poll() is not None
        try:
            records = json.loads(summary.read_text()).get("rounds", [])
        except (OSError, json.JSONDecodeError):
            records = []
        if len(records) > done:
            last = records[-1]
            if last.get("accuracy") is not None:
                bar.set_postfix(acc=f"{last['accuracy']:.4f}", refresh=False)
            bar.update(len(records) - done)
            done = len(records)
        if finished:
            break
        time.sleep(0.5)
    bar.close()
