"""Checkpoint and resume on the in-process engine: a run killed with SIGKILL and resumed ends
exactly like a run never interrupted (per-round metrics except timings, final model bitwise)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fedlabel
from fedlabel.checkpoint import load_checkpoint
from fedlabel.config import config_from_dict
from fedlabel.errors import ConfigError
from fedlabel.federation import initial_model
from fedlabel.report import environment
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

ROUNDS = 3
SMOKE = [
    "experiment=smoke",
    "engine=inprocess",
    "algorithm.local_steps=3",
    "algorithm.unlabeled_steps=3",
    "device=cpu",
    f"rounds={ROUNDS}",
]


def _simulate(out, *extra) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # both runs do the same arithmetic
    return subprocess.Popen(
        [sys.executable, "-m", "fedlabel.cli", "simulate", *SMOKE, f"output_dir={out}", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rounds_written(out) -> int:
    try:
        return len(json.loads((out / "summary.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _without_timings(summary):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in summary["rounds"]]


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = _simulate(full)
    victim = _simulate(killed)
    deadline = time.monotonic() + 120
    while (
        not (killed / "checkpoint.pt").exists()
        and victim.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()[-2000:]
    interrupted = json.loads((killed / "summary.json").read_text())
    assert interrupted["status"] == "running" and 1 <= len(interrupted["rounds"]) < ROUNDS
    assert not (killed / "model.pt").exists()

    resumed = _simulate(killed, "resume=true")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    assert a["status"] == b["status"] == "completed"
    assert _without_timings(a) == _without_timings(b)
    ma, mb = torch.load(full / "model.pt"), torch.load(killed / "model.pt")
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    csv_a, csv_b = ((d / "rounds.csv").read_text().splitlines() for d in (full, killed))
    assert len(csv_a) == len(csv_b) == ROUNDS + 1
    assert [ln.rsplit(",", 1)[0] for ln in csv_a] == [
        ln.rsplit(",", 1)[0] for ln in csv_b
    ]  # all but seconds
    assert load_checkpoint(killed)["round"] == ROUNDS


def test_resume_extends_rounds_and_keeps_earlier_ones(tmp_path):
    cfg = {**tiny_config(tmp_path), "rounds": 1}
    first = fedlabel.run(cfg, progress=False)
    assert first["environment"] == [environment()]
    # as if round 1 had run elsewhere: the record of that machine is kept, this one's appended
    path = tmp_path / "run" / "summary.json"
    elsewhere = {**environment(), "host": "elsewhere"}
    path.write_text(json.dumps({**first, "environment": [elsewhere]}))
    more = fedlabel.run(
        {**cfg, "rounds": 2, "resume": True, "eval_every": 2}, progress=False
    )  # may change on resume
    assert [r["round"] for r in more["rounds"]] == [1, 2]
    assert more["rounds"][:1] == first["rounds"]
    assert more["environment"] == [elsewhere, environment()]
    assert load_checkpoint(tmp_path / "run")["round"] == 2
    with pytest.raises(ConfigError, match="rounds: 1 is fewer than the 2 rounds"):
        fedlabel.run({**cfg, "resume": True}, progress=False)


def test_run_started_on_one_engine_goes_on_on_another(tmp_path):
    """A run begun with engine=vectorized (as on a lent GPU) continues on the in-process engine:
    its first round is kept and the second is the in-process engine's round from that state."""
    vec = {**tiny_config(tmp_path, engine="vectorized", algorithm="fedavg"), "rounds": 1}
    first = fedlabel.run(vec, progress=False)
    inproc = tiny_config(tmp_path, engine="inprocess", algorithm="fedavg")
    resumed = fedlabel.run({**inproc, "resume": True}, progress=False)
    assert resumed["status"] == "completed"
    assert resumed["rounds"][:1] == first["rounds"]
    assert load_checkpoint(tmp_path / "run")["config"]["engine"]["name"] == "inprocess"
    # the same run on the in-process engine throughout: near it, as in
    # test_vectorized_equals_sequential
    fedlabel.run(
        tiny_config(tmp_path, engine="inprocess", algorithm="fedavg", name="whole"), progress=False
    )
    a, b = torch.load(tmp_path / "run" / "model.pt"), torch.load(tmp_path / "whole" / "model.pt")
    start = initial_model(config_from_dict(inproc), in_channels=1, num_classes=10, image_size=28)[1]
    moved = max(float((b[k] - start[k]).abs().max()) for k in b)
    apart = max(float((a[k] - b[k]).abs().max()) for k in b)
    assert moved > 1e-2 and apart < 0.1 * moved


def test_resume_refuses_a_different_config_and_keeps_the_outputs(tmp_path):
    cfg = {**tiny_config(tmp_path), "rounds": 1}
    fedlabel.run(cfg, progress=False)
    before = (tmp_path / "run" / "summary.json").read_text()
    changed = {**cfg, "resume": True, "seed": 5, "data": {**cfg["data"], "alpha": 0.3}}
    with pytest.raises(
        ConfigError,
        match=r"data\.alpha \(checkpoint 0\.5, now 0\.3\); seed \(checkpoint 0, now 5\)",
    ):
        fedlabel.run(changed, progress=False)
    assert (tmp_path / "run" / "summary.json").read_text() == before


def test_resume_without_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.pt does not exist"):
        fedlabel.run({**tiny_config(tmp_path), "resume": True}, progress=False)


def test_resume_restores_algorithm_server_state(tmp_path):
    """FedMatch keeps client embeddings and models on the server (Algorithm.state_dict) and sends
    helpers every round here: resuming after round 1 must give the uninterrupted round 2."""

    def fedmatch(name):
        cfg = tiny_config(tmp_path, algorithm="fedmatch", name=name)
        cfg["algorithm"].update(helper_interval=1, num_helpers=2)
        return cfg

    whole = fedlabel.run(fedmatch("whole"), progress=False)
    fedlabel.run({**fedmatch("parts"), "rounds": 1}, progress=False)
    resumed = fedlabel.run({**fedmatch("parts"), "resume": True}, progress=False)
    assert _without_timings(resumed) == _without_timings(whole)
    assert resumed["rounds"][1]["helper_models"] > 0
    ma, mb = (
        torch.load(tmp_path / "whole" / "model.pt"),
        torch.load(tmp_path / "parts" / "model.pt"),
    )
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_a_checkpoint_from_before_the_validation_split_goes_on_only_without_one(tmp_path):
    """Checkpoints written before data.val_fraction existed ran without a validation set."""
    from fedlabel.checkpoint import check_resumable, config_differences

    old = tiny_config(tmp_path, overrides=["data.val_fraction=0"])
    saved = {**old, "data": {k: v for k, v in old["data"].items() if k != "val_fraction"}}
    state = {"config": saved, "round": 1, "rounds": [], "stop_reason": None}
    check_resumable(state, old)
    new = tiny_config(tmp_path)
    assert config_differences(saved, new) == ["data.val_fraction (checkpoint 0.0, now 0.05)"]
    with pytest.raises(ConfigError, match="data.val_fraction"):
        check_resumable(state, new)
    # FedAvg before FedProx became its mu ran mu=0; FedLabel has no mu, then or now
    fedavg = tiny_config(tmp_path, algorithm="fedavg")
    no_mu = {**fedavg, "algorithm": {k: v for k, v in fedavg["algorithm"].items() if k != "mu"}}
    assert config_differences(no_mu, fedavg) == []
    assert config_differences(no_mu, {**fedavg, "algorithm": {**fedavg["algorithm"], "mu": 0.1}})
    assert "mu" not in new["algorithm"] and config_differences(new, new) == []
