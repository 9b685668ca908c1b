"""A run's folder and processes: finished runs are never overwritten by accident, one live run
per folder, config errors are one line (exit 2) before anything is written, a stopped run says
so, and the reaper ends a whole process tree however its parent ends. In-process engine and
plain processes; the Flower engine's lifecycle is in tests/engines/test_lifecycle_flower.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fedlabel
from fedlabel.errors import ConfigError
from fedlabel.report import format_table, round_line
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

SMOKE = [
    "experiment=smoke",
    "engine=inprocess",
    "algorithm.local_steps=3",
    "algorithm.unlabeled_steps=3",
    "device=cpu",
]


def simulate(*args: str, **popen) -> subprocess.Popen:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "fedlabel.cli", "simulate", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def run_cli(*args: str, timeout: float = 120) -> tuple[int, str]:
    proc = simulate(*args)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def rounds_in(folder: Path) -> int:
    try:
        return len(json.loads((folder / "summary.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_finished_run_is_refused_byte_for_byte_unchanged(tmp_path):
    out = tmp_path / "run"
    code, err = run_cli(*SMOKE, "rounds=1", f"output_dir={out}")
    assert code == 0, err
    before = snapshot(out)
    assert {"summary.json", "checkpoint.pt", "model.pt", ".hydra/config.yaml"} <= set(before)
    code, err = run_cli(*SMOKE, "rounds=2", f"output_dir={out}")
    assert code == 2
    assert (
        err.strip()
        == f"fedlabel: config error: output_dir: {out} already holds a run (status completed, 1 of"
        " 1 rounds); resume=true continues it, overwrite=true replaces it, or choose another"
        " output_dir"
    )
    assert snapshot(out) == before  # Hydra's own files included: refused before Hydra writes


def test_overwrite_leaves_only_the_new_runs_files(tmp_path):
    old = {**tiny_config(tmp_path), "rounds": 2, "tensorboard": False}
    fedlabel.run(old, progress=False)
    (tmp_path / "run" / "flower").mkdir()  # as a Flower-engine run leaves it
    (tmp_path / "run" / "flower" / "run.log").write_text("old")
    with pytest.raises(ConfigError, match="already holds a run"):
        fedlabel.run({**old, "rounds": 1}, progress=False)
    new = fedlabel.run({**old, "rounds": 1, "overwrite": True, "seed": 1}, progress=False)
    out = tmp_path / "run"
    assert [r["round"] for r in new["rounds"]] == [1]
    assert len((out / "rounds.csv").read_text().splitlines()) == 2
    assert not (out / "flower").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "accuracy.png",
        "checkpoint.pt",
        "clients.json",
        "model.pt",
        "reliability.png",
        "rounds.csv",
        "summary.json",
    ]


def test_a_second_live_run_is_refused_and_sigterm_stops_the_first(tmp_path):
    out = tmp_path / "run"
    first = simulate(*SMOKE, "rounds=50", f"output_dir={out}")
    deadline = time.monotonic() + 120
    while rounds_in(out) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, first.stderr.read()
    code, err = run_cli(*SMOKE, "rounds=50", f"output_dir={out}", "resume=true")
    assert code == 2
    assert (
        f"is in use by a running fedlabel run (pid {first.pid})" in err
        and len(err.strip().splitlines()) == 1
    )
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "fedlabel: run stopped: stopped by SIGTERM" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["error"] == "stopped by SIGTERM"
    assert 1 <= len(summary["rounds"]) < 50
    assert torch.load(out / "checkpoint.pt", weights_only=False)["round"] >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seed=-1"], "seed: must be in [0, 2**63), got -1"),
        (
            ["output_dir=/proc/fedlabel/x"],
            "output_dir: cannot create /proc/fedlabel/x (No such file or directory)",
        ),
        (["algorithm=nosuch"], "unknown option algorithm/nosuch; choose from fedavg,"),
        (["data.nosuch=1"], "unknown config key data.nosuch"),
        (
            ["engine.workers=2", "data.bag_size=8"],
            "engine.workers: worker processes need instance labels",
        ),
        (["resume=true"], "resume: "),
        (["device=cuda:7"], "device: cuda:7 but torch"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(tmp_path, args, message):
    if "device=cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = (
        [] if any(a.startswith("output_dir=") for a in args) else [f"output_dir={tmp_path / 'run'}"]
    )
    code, err = run_cli(*SMOKE, *out, *args, timeout=60)
    assert code == 2
    assert err.strip().startswith("fedlabel: config error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_privacy_runs_show_epsilon():
    records = [
        {
            "round": 1,
            "accuracy": 0.5,
            "loss": 1.0,
            "epsilon": 2.5,
            "clients": 4,
            "failed_clients": 0,
            "rejected_updates": 1,
            "seconds": 1.0,
        }
    ]
    assert format_table(records).splitlines()[0].split() == [
        "round",
        "accuracy",
        "loss",
        "coverage",
        "pl_acc",
        "glob_exp",
        "eps",
        "sec",
    ]
    assert "eps" not in format_table([{**records[0], "epsilon": None}])
    assert (
        round_line(records[0], 30)
        == "round 1/30: accuracy 0.5000, loss 1.0000, eps 2.5, clients 4 (failed 0, rejected 1)"
    )


def test_dpsgd_run_prints_epsilon(tmp_path):
    smoke = [a for a in SMOKE if "unlabeled_steps" not in a]
    proc = simulate(
        *smoke, "algorithm=fedavg", "privacy=dpsgd", "rounds=1", f"output_dir={tmp_path / 'dp'}"
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    eps = json.loads((tmp_path / "dp" / "summary.json").read_text())["rounds"][0]["epsilon"]
    assert " eps " in out.splitlines()[0]
    assert f"privacy: epsilon {eps:.3g} at delta 1e-05 (dpsgd)" in out


REAPER_TREE = """
import subprocess, sys, time
from fedlabel.engines.reaper import reaped
# the reaper runs a shell whose subshell starts `sleep 301` in a new session and exits, so that
# sleep is orphaned (as Flower's SuperExec and Ray's daemons are); this parent sleeps until killed
subprocess.Popen(reaped(["sh", "-c", "(setsid sleep 301 &); sleep 302"]))
print("started", flush=True)
time.sleep(300)
"""


def _tree(pid: int) -> list[int]:
    from fedlabel.engines.reaper import descendants

    return descendants(pid)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper is Linux's subreaper")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_reaper_ends_the_whole_tree_when_its_parent_dies(sig):
    parent = subprocess.Popen(
        [sys.executable, "-c", REAPER_TREE], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout.readline() == "started\n"
    deadline = time.monotonic() + 20
    while (
        len(_tree(parent.pid)) < 4 and time.monotonic() < deadline
    ):  # reaper, sh, sleep 302, orphan sleep 301
        time.sleep(0.05)
    tree = _tree(parent.pid)
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree]
    assert b"sleep\x00301\x00" in commands, commands  # the orphan is still under the reaper
    parent.send_signal(sig)
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(tree) == []
