"""The Flower engine's processes end with the run however it ends, errors come before work, and
the ServerApp's round lines reach Flower's own log. Real SuperLinks, Ray and `flwr` on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch

import fedlabel
from fedlabel.config import config_from_dict, to_run_config, unflatten
from fedlabel.engines.flower import CONNECTION, _wait_healthy, flower_env, free_port, project_dir
from fedlabel.engines.reaper import descendants
from tests.engines.conftest import tiny_config
from tests.test_lifecycle import _alive, rounds_in

pytestmark = pytest.mark.slow

ROUNDS = 4
SMOKE = [
    "experiment=smoke",
    "algorithm.local_steps=3",
    "algorithm.unlabeled_steps=3",
    "device=cpu",
    f"rounds={ROUNDS}",
]


def _simulate(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1"
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedlabel.cli",
            "simulate",
            "engine=flower",
            *SMOKE,
            f"output_dir={out}",
            *extra,
        ],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _uninterrupted(tmp_path) -> dict:
    """The same run on the in-process engine at one thread (Flower's workers use one; the two
    engines then agree round for round, tests/engines/test_flower.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fedlabel.run(
            {**tiny_config(tmp_path, name="whole"), "rounds": ROUNDS}, progress=False
        )
    finally:
        torch.set_num_threads(threads)


def _same_rounds(a: dict, b: dict) -> None:
    assert len(a["rounds"]) == len(b["rounds"]) == ROUNDS
    for x, y in zip(a["rounds"], b["rounds"], strict=True):
        for key in (
            "round",
            "accuracy",
            "pseudo_label_coverage",
            "pseudo_label_accuracy",
            "participants",
        ):
            assert x[key] == y[key], (x["round"], key)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_flower_run_leaves_nothing_running_and_resumes_exactly(tmp_path, sig):
    out = tmp_path / "run"
    victim = _simulate(out)
    deadline = time.monotonic() + 240
    while rounds_in(out) < 1 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = descendants(
        victim.pid
    )  # SuperLink, SuperExec, simulation/ServerApp, Ray, workers, flwr run
    written = rounds_in(out)
    victim.send_signal(sig)
    assert written >= 1 and len(tree) >= 8, (
        written,
        tree,
        victim.stderr.read()[-2000:] if victim.poll() else "",
    )
    victim.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(tree) == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in _alive(tree)]
    summary = json.loads((out / "summary.json").read_text())
    # at most the round the ServerApp was completing as the signal came (on a loaded machine the
    # tree takes a moment to stop), and nothing once the processes are gone
    assert written <= len(summary["rounds"]) <= written + 1
    time.sleep(3)
    assert json.loads((out / "summary.json").read_text()) == summary
    if sig == signal.SIGTERM:
        assert victim.returncode == 128 + signal.SIGTERM
        assert summary["status"] == "stopped" and summary["error"] == "stopped by SIGTERM"
    else:
        assert summary["status"] == "running"  # nobody was left to say otherwise; the lock is free
    resumed = _simulate(out, "resume=true")
    _, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-3000:]
    whole = _uninterrupted(tmp_path)
    final = json.loads((out / "summary.json").read_text())
    assert final["status"] == "completed"
    _same_rounds(final, whole)


def test_infeasible_partition_fails_before_flower_starts(tmp_path):
    """A Dirichlet split that cannot be made fails in the starting process with one line, before
    any Flower process starts (no flower/ folder: no SuperLink, no wait on one)."""
    proc = _simulate(
        tmp_path / "run",
        "data.num_clients=100",
        "clients_per_round=10",
        "data.train_samples=3000",
        "data.alpha=0.1",
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "Dirichlet partition failed" in errors[0], err
    assert not (tmp_path / "run" / "flower").exists()


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    """A simulation SuperLink started as a user would, for plain `flwr run`."""
    work = tmp_path_factory.mktemp("superlink")
    port = free_port()
    (work / "home").mkdir()
    (work / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress ='
        f' "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(work / "home")
    with open(work / "superlink.log", "w") as log:
        proc = subprocess.Popen(
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
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(proc, port, work / "superlink.log")
        yield env, work
    finally:
        tree = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def _flwr_run(env, work: Path, cfg: dict, *federation: str) -> tuple[int, str]:
    run_toml = work / "run_config.toml"
    run_toml.write_text(tomli_w.dumps(cfg))
    out = subprocess.run(
        [
            "flwr",
            "run",
            str(project_dir()),
            CONNECTION,
            "--run-config",
            str(run_toml),
            "--stream",
            *federation,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    ids = [ln for ln in out.stdout.splitlines() if "Successfully started run" in ln]
    assert ids, out.stdout + out.stderr
    return int(ids[0].split()[-1]), out.stdout + out.stderr


def _status(env, run_id: int) -> str:
    out = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return next(r["status"] for r in json.loads(out.stdout)["runs"] if int(r["run-id"]) == run_id)


def test_plain_flwr_run_fails_fast_on_the_node_count_and_logs_each_round(superlink, tmp_path):
    env, work = superlink
    cfg = unflatten(
        to_run_config(config_from_dict(tiny_config(tmp_path, engine="flower", name="wrong")))
    )
    start = time.monotonic()
    run_id, text = _flwr_run(env, work, cfg)  # Flower's default federation: 2 simulated nodes
    assert time.monotonic() - start < 90
    assert _status(env, run_id) == "finished:failed"
    assert (
        "the simulation has 2 nodes but data.num_clients=4: run with --federation-config"
        ' "num-supernodes=4"' in text
    )

    cfg["output_dir"] = str(tmp_path / "right")
    run_id, _ = _flwr_run(
        env, work, cfg, "--federation-config", "num-supernodes=4 client-resources-num-cpus=1"
    )
    assert _status(env, run_id) == "finished:completed"
    log = subprocess.run(
        ["flwr", "log", str(run_id), CONNECTION, "--show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    summary = json.loads((tmp_path / "right" / "summary.json").read_text())
    for r in summary["rounds"]:
        assert (
            f"fedlabel: round {r['round']}/{cfg['rounds']}: accuracy {r['accuracy']:.4f}, loss"
            f" {r['loss']:.4f}" in log
        ), log
