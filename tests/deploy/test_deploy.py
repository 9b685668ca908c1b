"""A real deployment on 127.0.0.1: the server side (SuperLink behind nginx) and SuperNodes as
separate processes, TLS on every connection, only registered SuperNode keys admitted, runs
signed by the admin, started with the `fedlabel deploy` commands an operator runs. Success is
read from the run's final state in `flwr ls`, never from an exit code. Every process started
here is ended by PID (with its descendants) in a finally (fedlabel.deploy_local)."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from fedlabel import deploy
from fedlabel.data import save_site
from fedlabel.deploy_local import kill
from tests.deploy.federation import RUN_TIMEOUT_S, submit, two_site_federation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with two_site_federation(tmp_path_factory.mktemp("deploy")) as fed:
        yield fed


def test_two_sites_complete_a_tls_authenticated_run(federation):
    run_id = submit(federation, "run", "rounds=2")
    echoed = []  # what `fedlabel deploy submit` prints while it waits
    state = deploy.follow_run(run_id, timeout=RUN_TIMEOUT_S, env=federation.env, echo=echoed.append)
    assert state["status"] == "finished:completed", federation.log("superlink")[-3000:]
    rounds = [line for line in echoed if line.startswith("round ")]
    assert [line.split(":")[0] for line in rounds] == ["round 1/2", "round 2/2"], echoed
    assert all(
        "accuracy " in line and "clients 2 (failed 0, rejected 0)" in line for line in rounds
    )
    summary = json.loads((federation.work / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [(r["round"], r["clients"]) for r in summary["rounds"]] == [(1, 2), (2, 2)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in summary["rounds"])
    clients = json.loads((federation.work / "run" / "clients.json").read_text())
    assert [(c["client_id"], c["site"], c["num_labeled"], c["num_unlabeled"]) for c in clients] == [
        (0, "site1", 20, 180),
        (1, "site2", 20, 180),
    ]
    # TLS: the SuperLink served HTTPS only, on 127.0.0.1 behind nginx
    assert f"Uvicorn running on https://{federation.local_address}" in federation.log("superlink")


def test_unregistered_key_is_refused(federation):
    proc = federation.join("site3", data="site1")  # site3's key pair was never registered
    try:
        proc.wait(timeout=60)
    finally:
        kill(proc)
    assert proc.returncode != 0
    assert "Failed to activate SuperNode" in federation.log("site3")
    nodes = deploy.list_sites(env=federation.env)
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(federation.node_ids.values())


def test_bad_site_data_fails_the_run_naming_the_file(federation):
    """A third site whose images have 3 channels (the server's test set has 1): the run stops
    before round 1 and its error names the site's file and the problem."""
    bad = federation.work / "site4"
    save_site(bad, labeled_images=np.zeros((4, 3, 28, 28), np.uint8), labeled_labels=np.arange(4))
    federation.register("site4")
    proc = federation.join("site4")
    try:
        federation.wait_online(3)
        run_id = submit(federation, "bad", "rounds=1", sites=3)
        state = deploy.wait_run(run_id, timeout=RUN_TIMEOUT_S, env=federation.env)
    finally:
        kill(proc)  # SIGTERM: the SuperNode signs off
    assert state["status"] == "finished:failed"
    error = json.loads((federation.work / "bad" / "summary.json").read_text())["error"]
    assert f"{bad / 'labeled.npz'}: x has 3 channel(s)" in error and "have 1" in error


def test_site_killed_in_round_one_does_not_stop_the_run(federation):
    """site2 is killed (SIGKILL, with its ClientApp) once it has received its round-1 train
    message. The round ends at faults.round_deadline_s (or earlier, when Flower reports site2
    unavailable after its heartbeats stop) with site1 alone, and so does round 2. The deadline
    leaves room for a slow healthy site on a loaded machine."""
    offset = len(federation.log("site2"))
    run_id = submit(
        federation, "killed", "rounds=2", "faults.round_deadline_s=30", "faults.min_clients=1"
    )
    deadline = time.monotonic() + 60
    while "Receiving: train message" not in federation.log("site2")[offset:]:
        assert time.monotonic() < deadline, "site2 never received its round-1 train message"
        time.sleep(0.2)
    kill(federation.procs["site2"], signal.SIGKILL)
    state = deploy.wait_run(run_id, timeout=RUN_TIMEOUT_S, env=federation.env)
    assert state["status"] == "finished:completed", federation.log("superlink")[-3000:]
    summary = json.loads((federation.work / "killed" / "summary.json").read_text())
    assert [(r["round"], r["clients"], r["participants"]) for r in summary["rounds"]] == [
        (1, 1, [0]),
        (2, 1, [0]),
    ]
    assert all(
        f["client"] == 1 and f["reason"] in ("timeout", "crashed")
        for r in summary["rounds"]
        for f in r["failed"]
    )
