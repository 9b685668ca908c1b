"""The Flower engine: our ServerApp and ClientApp on Flower's simulation runtime (Ray backend).

Started the way a user would: a private SuperLink on 127.0.0.1 (runtime dependency installation
disabled, so it never downloads packages), then ``flwr run <project> --stream``. Success is read
from ``flwr ls`` (``flwr run --stream`` exits 0 even when a run fails). Both run under a reaper
(fedlabel/engines/reaper.py), so every process they start ends when this run ends: normally, by
an error, by SIGTERM/SIGINT (the summary then says ``stopped``) or by a SIGKILL of this process.
The client partition is built here first, so an impossible data setting fails before anything
starts; the console says what start-up waits for, from the ServerApp's log lines. With
``engine.ray_address`` the simulation runtime joins a running Ray cluster instead of starting its
own Ray (docs/performance.md, "Across machines"). This module drives Flower's command-line tools;
it does not import flwr."""

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
from fedlabel.config import Config, config_to_dict, to_run_config, unflatten
from fedlabel.engines.reaper import reaped
from fedlabel.federation import load_federated
from fedlabel.lifecycle import LOCK_ENV, RunStopped
from fedlabel.report import write_json_atomic

CONNECTION = "fedlabel"
STARTUP_TIMEOUT_S = 60.0
# The ServerApp marks its start-up log lines with this (server/server_app.py); shown while waiting.
PHASE_MARK = "fedlabel: "


class FlowerRunError(RuntimeError):
    """The Flower run did not complete; the message says where its logs are."""


def project_dir() -> Path:
    """The Flower app's project directory (holds pyproject.toml with [tool.flwr.app])."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "server" / "server_app.py").is_file():
        raise FlowerRunError(
            "engine=flower needs the fedlabel source tree (pyproject.toml, server/, clients/); not"
            f" found at {root}"
        )
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
    raise FlowerRunError(
        f"flower-superlink did not become healthy within {STARTUP_TIMEOUT_S:.0f} s; see {log}"
    )


def _start(command: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``command`` under a reaper, in its own session (a terminal's Ctrl-C reaches only us)."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            reaped(command), env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    """End a reaper we started: it ends its whole process tree, then itself."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_status(env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError as err:
        raise FlowerRunError(
            f"could not read `flwr ls` output: {out.stdout[-500:]} {out.stderr[-500:]}"
        ) from err


def run_flower(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run cfg on Flower's simulation engine; returns the ServerApp's summary.json."""
    console = _Console(progress)
    console.phase("building the client partition")
    load_federated(cfg)  # fail here, with the data error, rather than once per ClientApp
    if (
        cfg.engine.num_gpus_per_client > 0
        and not torch.cuda.is_available()
        and not cfg.engine.ray_address
    ):
        raise FlowerRunError(
            f"engine.num_gpus_per_client={cfg.engine.num_gpus_per_client} but torch sees no GPU"
            " here (Ray would find no worker to place clients on); set it to 0"
        )
    out = Path(cfg.output_dir).resolve()
    run_config = config_to_dict(cfg)
    run_config["output_dir"] = str(out)
    if cfg.resume:  # the ServerApp checks again; failing here is faster and clearer
        check_resumable(load_checkpoint(out), run_config)
    work = out / "flower"
    (work / "home").mkdir(parents=True, exist_ok=True)
    for name in (
        "state.db",
        "state.db-wal",
        "state.db-shm",
    ):  # scratch of an earlier (e.g. stopped) run
        (work / name).unlink(missing_ok=True)
    port = cfg.engine.superlink_port or free_port()
    (work / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress ='
        f' "127.0.0.1:{port}"\ninsecure = true\n'
    )
    flwr_config = {**to_run_config(cfg), "output_dir": str(out)}
    (work / "run_config.toml").write_text(tomli_w.dumps(unflatten(flwr_config)))
    env = flower_env(work / "home")
    env[LOCK_ENV] = str(out)  # this process holds output_dir's lock; the ServerApp writes under it
    # Flower's Ray backend calls ray.init() without an address, so Ray reads RAY_ADDRESS: set,
    # the simulation joins that cluster; unset, it starts a private local Ray, as it always has.
    env.pop("RAY_ADDRESS", None)
    if cfg.engine.ray_address:
        env["RAY_ADDRESS"] = cfg.engine.ray_address
    superlink_log, run_log = work / "superlink.log", work / "run.log"
    console.phase("starting the SuperLink")
    superlink = _start(
        [
            "flower-superlink",
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            str(work / "state.db"),
        ],
        env=env,
        log=superlink_log,
    )
    started = [superlink]
    try:
        _wait_healthy(superlink, port, superlink_log)
        e = cfg.engine
        federation = (
            f"num-supernodes={cfg.data.num_clients}"
            f" client-resources-num-cpus={e.num_cpus_per_client}"
            f" client-resources-num-gpus={e.num_gpus_per_client}{_sleeper_workers(cfg)}"
        )
        console.phase("submitting the run")
        started.append(
            _start(
                [
                    "flwr",
                    "run",
                    str(project_dir()),
                    CONNECTION,
                    "--run-config",
                    str(work / "run_config.toml"),
                    "--federation-config",
                    federation,
                    "--stream",
                ],
                env=env,
                log=run_log,
            )
        )
        _follow(started[-1], out / "summary.json", run_log, cfg.rounds, console)
        runs = run_status(env)
        statuses = [r.get("status", "") for r in runs]
        if not runs or statuses[-1] != "finished:completed":
            raise FlowerRunError(
                f"Flower run ended as {statuses[-1] if statuses else 'unknown'};"
                f" {_last_error(run_log)}logs: {run_log}, {superlink_log}"
            )
    except BaseException as err:
        for proc in reversed(started):
            _stop(proc)
        _close_summary(out / "summary.json", err)
        raise
    finally:
        console.close()
    for proc in reversed(started):
        _stop(proc)
    return json.loads((out / "summary.json").read_text())


def _close_summary(path: Path, err: BaseException) -> None:
    """Once the ServerApp is gone: a summary it left as running says how the run ended
    (``stopped`` after a signal, else ``failed``); its rounds and the last checkpoint stay."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if summary.get("status") == "running":
        stopped = isinstance(err, RunStopped)
        summary.update(
            status="stopped" if stopped else "failed",
            error=str(err) if stopped else f"{type(err).__name__}: {err}",
        )
        write_json_atomic(path, summary)


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
    lines = [
        ln.strip()
        for ln in log.read_text(errors="replace").splitlines()
        if "Error" in ln or "Exception" in ln
    ]
    return f"last error: {lines[-1]}; " if lines else ""


class _Console:
    """What the user sees: a line per start-up phase until round 1, then a bar of rounds."""

    def __init__(self, progress: bool) -> None:
        self.progress, self.bar, self.last = progress, None, ""

    def phase(self, text: str) -> None:
        if self.progress and self.bar is None and text != self.last:
            print(f"fedlabel: {text} ...", file=sys.stderr, flush=True)
        self.last = text

    def rounds(self, total: int, records: list[dict]) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc="rounds",
                unit="round",
                disable=not self.progress,
                file=sys.stderr,
                dynamic_ncols=True,
                initial=0,
            )
        last = records[-1]
        fields = (("acc", "accuracy", ".4f"), ("eps", "epsilon", ".2f"))
        self.bar.set_postfix(
            {
                name: format(last[key], fmt)
                for name, key, fmt in fields
                if last.get(key) is not None
            },
            refresh=False,
        )
        self.bar.update(len(records) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _phase(run_log: Path) -> str | None:
    """The last start-up line the ServerApp logged (it reaches run.log through --stream)."""
    try:
        lines = [ln for ln in run_log.read_text(errors="replace").splitlines() if PHASE_MARK in ln]
    except OSError:
        return None
    return lines[-1].split(PHASE_MARK, 1)[1].strip() if lines else None


def _follow(
    runner: subprocess.Popen, summary: Path, run_log: Path, rounds: int, console: _Console
) -> None:
    """Wait for `flwr run` to end: start-up phases first, then the rounds written so far."""
    console.phase("starting Flower's simulation runtime and Ray")
    done = 0
    while True:
        finished = runner.poll() is not None
        try:
            records = json.loads(summary.read_text()).get("rounds", [])
        except (OSError, json.JSONDecodeError):
            records = []
        if records and (len(records) > done or console.bar is None):
            done = len(records)
            console.rounds(rounds, records)
        elif not records and (phase := _phase(run_log)):
            console.phase(phase)
        if finished:
            break
        time.sleep(0.5)
