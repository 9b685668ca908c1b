"""The attacks of issue 22 item 1, played with real processes on 127.0.0.1 (TLS, registered site
keys, the server side behind nginx): an outsider holding only the public ca.crt, using Flower's
own `flwr` CLI, cannot list sites, register its key or submit its app; an app that reaches the
SuperLink by another way (here: from the server machine itself, past nginx) is refused by every
site unless it is signed by a key the site trusts, and none of its code runs there; the admin,
with its credential, does each of these steps (and stops its run, which the outsider cannot)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import tomli_w

from fedlabel import deploy
from fedlabel.deploy_local import LocalFederation
from fedlabel.deploy_trust import ADMIN_FILE
from tests.deploy.federation import submit, two_site_federation

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parent / "outsider_app"
REFUSED = "fedlabel: REFUSED app"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with two_site_federation(tmp_path_factory.mktemp("outsider")) as fed:
        yield fed


def _home(fed: LocalFederation, name: str, *, address: str, ca: Path) -> dict[str, str]:
    env = deploy.flower_env({**os.environ, "FLWR_HOME": str(fed.work / name)})
    deploy.write_connection(superlink=address, ca=ca, env=env)
    return env


def _flwr(env: dict[str, str], *args: str, trust_wrapper: bool = False) -> tuple[bool, str]:
    """(accepted, output) of `flwr ARGS fedlabel-deploy --format json`: Flower's plain CLI, or
    fedlabel's wrapper (which signs `flwr run` with the key in $FLWR_HOME/fedlabel-admin.toml)."""
    cmd = [*deploy.TRUST, "flwr"] if trust_wrapper else ["flwr"]
    out = subprocess.run(
        [*cmd, *args, deploy.CONNECTION, "--format", "json"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        accepted = out.returncode == 0 and json.loads(out.stdout).get("success") is True
    except json.JSONDecodeError:
        accepted = False
    return accepted, out.stdout + out.stderr


def _refusals(fed: LocalFederation) -> list[int]:
    return [fed.log(site).count(REFUSED) for site in ("site1", "site2")]


def _wait_refusals(fed: LocalFederation, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while min(_refusals(fed)) < count:
        assert time.monotonic() < deadline, (
            f"sites refused {_refusals(fed)} apps, expected {count} each"
        )
        time.sleep(0.5)


def test_outsider_with_ca_crt_is_refused_and_sites_run_only_admin_signed_apps(federation):
    fed = federation
    outsider = _home(fed, "outsider", address=fed.address, ca=fed.certs / "ca.crt")
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ecdsa",
            "-b",
            "384",
            "-N",
            "",
            "-f",
            str(fed.work / "outsider.key"),
        ],
        check=True,
    )

    # 1. the outsider, with Flower's own CLI and ca.crt, at the public address
    accepted, out = _flwr(outsider, "supernode", "list")
    assert not accepted and "403" in out, f"the outsider listed the sites: {out[-1500:]}"
    accepted, out = _flwr(outsider, "supernode", "register", str(fed.work / "outsider.key.pub"))
    assert not accepted and "403" in out, f"the outsider registered its own key: {out[-1500:]}"
    accepted, out = _flwr(outsider, "run", str(APP))
    assert not accepted and "403" in out, f"the outsider's app was accepted: {out[-1500:]}"

    # 2. the same app submitted past nginx, from the server machine: unsigned, then signed by a
    # key no site trusts; every site refuses it before any of its code runs
    insider = _home(
        fed, "insider", address=fed.local_address, ca=fed.work / "state" / "loopback.crt"
    )
    accepted, out = _flwr(insider, "run", str(APP))
    assert accepted, f"the SuperLink itself refused the app: {out[-1500:]}"
    _wait_refusals(fed, 1)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fed.work / "outsider-sign.key")],
        check=True,
    )
    (fed.work / "insider" / ADMIN_FILE).write_text(
        tomli_w.dumps({"sign-key": str(fed.work / "outsider-sign.key")})
    )
    accepted, out = _flwr(insider, "run", str(APP), trust_wrapper=True)
    assert accepted, f"the SuperLink itself refused the app: {out[-1500:]}"
    _wait_refusals(fed, 2)
    for site in ("site1", "site2"):
        assert "the app is not signed; none of its code runs at this site" in fed.log(site)
        assert "which this site does not trust; none of its code runs at this site" in fed.log(site)
    assert not list(fed.work.glob("stolen-*")), "the outsider's ClientApp ran at a site"

    # 3. the admin, with its client certificate and signing key, at the same public address: the
    # sites accept its signed app (the run is stopped then: test_deploy.py runs whole ones)
    nodes = deploy.list_sites(env=fed.env)
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(fed.node_ids.values())
    assert deploy.register(fed.certs / "site3.key.pub", env=fed.env) > 0
    run_id = submit(fed, "admin-run", "rounds=1")
    deadline = time.monotonic() + 90
    while not all("fedlabel: accepted app" in fed.log(site) for site in ("site1", "site2")):
        assert time.monotonic() < deadline, "the sites did not accept the admin's signed app"
        time.sleep(0.5)
    accepted, out = _flwr(outsider, "stop", str(run_id))
    assert not accepted and "403" in out, f"the outsider stopped the admin's run: {out[-1500:]}"
    deploy.flwr("stop", str(run_id), env=fed.env)
    assert deploy.wait_run(run_id, timeout=60, env=fed.env)["status"] == "finished:stopped"
    assert _refusals(fed) == [2, 2]
