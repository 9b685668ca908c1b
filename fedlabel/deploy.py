"""`fedlabel deploy`: the commands a server operator, the admin and each site operator run to
train across real sites with Flower's deployment runtime (docs/deploy.md walks through them).

  fedlabel deploy server  --certs DIR --state DIR [--host H] [--port P] [--local-port P]
      the server side
  fedlabel deploy connect --superlink HOST:PORT --ca FILE --cert FILE --key FILE [--sign-key FILE]
      this machine's flwr CLI as the admin
  fedlabel deploy register PUBKEY             allow a site's key (prints its node id)
  fedlabel deploy unregister NODE_ID          remove a site for good
  fedlabel deploy sites                       list registered sites and their status
  fedlabel deploy submit  --sites N --output-dir DIR [--no-wait] [key=value ...]   a signed run
  fedlabel deploy flwr ARGS...                any `flwr` command as the admin
  fedlabel deploy join    --superlink HOST:PORT --ca FILE --key FILE --trust PUBKEY --site-dir DIR
                          [--site-id NAME]
  fedlabel deploy demo-sites OUT --sites N [--per-site N] [--label-ratio R] [--test-samples N]

Every connection uses TLS. The server runs the SuperLink on 127.0.0.1 behind nginx, which lets
sites reach the Fleet API and only holders of an admin client certificate the Control API; the
SuperLink admits only registered SuperNode keys and never installs packages at run time. A site
runs only apps signed by a key it trusts. The commands assemble Flower's own command lines
(`flower-superlink`, `flower-supernode`, `flwr`; the last two through fedlabel.deploy_trust, which
adds the client certificate, the app signature and its check) and read their results; `join`
replaces itself with the SuperNode, so its PID is the SuperNode's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

CONNECTION = "fedlabel-deploy"  # the connection name in $FLWR_HOME/config.toml
DEFAULT_PORT = 9092
DEFAULT_LOCAL_PORT = 9093  # the SuperLink's own port, on 127.0.0.1 behind nginx
TRUST = [sys.executable, "-m", "fedlabel.deploy_trust"]
# Flower's SuperExec (which starts a ServerApp or ClientApp process per run or message) polls
# for work every second by default; this shortens it on every machine we start.
POLL_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


class DeployError(RuntimeError):
    """A deployment command failed; the message says which and why."""


def flower_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's tools: no telemetry or update check, this venv's bin first."""
    env = dict(os.environ if env is None else env)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env.setdefault(
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", POLL_ENV["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]
    )
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _need(path: str | Path, what: str) -> str:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DeployError(f"{what} {path} is missing")
    return str(path)


def server_certs(certs: str | Path) -> dict[str, str]:
    """The public side's files: server.pem + server.key (TLS) and admin-ca.crt (admin clients)."""
    names = {
        "server.pem": "server certificate",
        "server.key": "server private key",
        "admin-ca.crt": "admin CA certificate",
    }
    return {name: _need(Path(certs) / name, what) for name, what in names.items()}


def superlink_command(*, state: str | Path, local_port: int = DEFAULT_LOCAL_PORT) -> list[str]:
    """flower-superlink on 127.0.0.1 only, with TLS (a loopback certificate kept in state/),
    registered SuperNodes only, no run-time package installation, its state (runs, registered
    keys) in state/state.db."""
    from fedlabel.deploy_proxy import loopback_certificate

    state = Path(state).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    crt, key = loopback_certificate(state)
    return [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(crt),
        "--ssl-certfile",
        str(crt),
        "--ssl-keyfile",
        str(key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(local_port),
        "--database",
        str(state / "state.db"),
    ]


def serve(
    *,
    certs: str | Path,
    state: str | Path,
    host: str,
    port: int,
    local_port: int = DEFAULT_LOCAL_PORT,
) -> int:
    """The server side: the SuperLink on 127.0.0.1:local_port and nginx on host:port in front."""
    from fedlabel import deploy_proxy

    try:
        deploy_proxy.nginx_binary()
    except FileNotFoundError as err:
        raise DeployError(str(err)) from None
    if port == local_port:
        raise DeployError(f"--port and --local-port must differ, both are {port}")
    files = server_certs(certs)
    superlink = superlink_command(state=state, local_port=local_port)
    state = Path(state).expanduser().resolve()
    loopback_crt = deploy_proxy.loopback_certificate(state)[0]
    conf = deploy_proxy.nginx_config(
        state=state,
        certs=files,
        host=host,
        port=port,
        local_port=local_port,
        loopback_crt=loopback_crt,
    )
    return deploy_proxy.serve(
        superlink, conf, local_port=local_port, loopback_crt=loopback_crt, env=flower_env()
    )


def supernode_command(
    *,
    superlink: str,
    ca: str | Path,
    key: str | Path,
    trust: list[str | Path],
    site_dir: str | Path,
    site_id: str = "",
    port: int = 9094,
) -> list[str]:
    """flower-supernode for one site: TLS verified against the CA, authenticated with the site's
    private key, node config naming its data directory (and name), running only apps signed by
    one of the ``trust`` keys (Ed25519 public keys, OpenSSH format). ``port`` is the SuperNode's
    local API for its ClientApp processes (127.0.0.1; one per SuperNode on a machine)."""
    from fedlabel.deploy_trust import TrustError, load_public_key

    if not trust:
        raise DeployError(
            "name at least one app-signing key this site trusts (--trust admin-sign.key.pub)"
        )
    trusted = [_need(t, "trusted app-signing key") for t in trust]
    try:
        for path in trusted:
            load_public_key(path)
    except TrustError as err:
        raise DeployError(str(err)) from None
    site = Path(site_dir).expanduser().resolve()
    if not site.is_dir():
        raise DeployError(f"site directory {site} is missing")
    node_config = f"site-dir={json.dumps(str(site))}" + (
        f" site-id={json.dumps(site_id)}" if site_id else ""
    )
    return [
        *TRUST,
        "supernode",
        *trusted,
        "--",
        "--root-certificates",
        _need(ca, "CA certificate"),
        "--superlink",
        superlink,
        "--auth-supernode-private-key",
        _need(key, "site private key"),
        "--node-config",
        node_config,
        "--port",
        str(port),
    ]


def flwr_home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("FLWR_HOME", "~/.flwr")).expanduser()


def write_connection(
    *,
    superlink: str,
    ca: str | Path,
    cert: str | Path = "",
    key: str | Path = "",
    sign_key: str | Path = "",
    env: dict[str, str] | None = None,
) -> Path:
    """Add (or replace) the `fedlabel-deploy` connection in $FLWR_HOME/config.toml and make it the
    default (other connections there are kept); name the admin's client certificate and key and
    app-signing key in $FLWR_HOME/fedlabel-admin.toml (without them: an outsider's view)."""
    from fedlabel.deploy_trust import ADMIN_FILE, TrustError, load_private_key

    admin = {}
    if cert or key:
        admin.update(
            cert=_need(cert, "admin client certificate"), key=_need(key, "admin client key")
        )
    if sign_key:
        admin["sign-key"] = _need(sign_key, "app-signing key")
        try:
            load_private_key(sign_key)
        except TrustError as err:
            raise DeployError(str(err)) from None
    flwr_home(env).mkdir(parents=True, exist_ok=True)
    (flwr_home(env) / ADMIN_FILE).write_text(tomli_w.dumps(admin))
    path = flwr_home(env) / "config.toml"
    config = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = config.setdefault("superlink", {})
    links["default"] = CONNECTION
    links[CONNECTION] = {"address": superlink, "root-certificates": _need(ca, "CA certificate")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def flwr(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> dict[str, Any]:
    """Run `flwr <args> fedlabel-deploy --format json` and return its JSON answer."""
    cmd = [*TRUST, "flwr", *args, CONNECTION, "--format", "json"]
    out = subprocess.run(cmd, env=flower_env(env), capture_output=True, text=True, timeout=timeout)
    try:
        answer = json.loads(out.stdout)
    except json.JSONDecodeError:
        answer = {"success": False, "error-message": (out.stdout + out.stderr).strip()[-1000:]}
    if not answer.get("success", False):
        command = " ".join(cmd[len(TRUST) + 1 :])
        raise DeployError(f"`flwr {command}` failed: {answer.get('error-message', answer)}")
    return answer


def register(public_key: str | Path, *, env: dict[str, str] | None = None) -> int:
    """Register a site's public key with the SuperLink; returns the node id it will have."""
    return int(flwr("supernode", "register", _need(public_key, "public key"), env=env)["node-id"])


def unregister(node_id: int, *, env: dict[str, str] | None = None) -> None:
    """Remove a site: its key is refused from now on (a new key pair is needed to come back)."""
    flwr("supernode", "unregister", str(node_id), env=env)


def list_sites(*, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return flwr("supernode", "list", env=env)["nodes"]


def parse_override(item: str) -> tuple[str, Any]:
    """'key=value' with a TOML value (strings may go unquoted) -> (key, value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise DeployError(f"override {item!r}: expected key=value")
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def run_config_file(*, sites: int, output_dir: str, overrides: list[str], path: Path) -> Path:
    """Validate the run's settings locally (schema defaults + key=value overrides with the
    schema's dotted names, as `fedlabel simulate` takes them, TOML values) and write them as a
    run-config TOML for `flwr run` (to_run_config: only the chosen algorithm's keys)."""
    from fedlabel.algorithms import ALGORITHMS
    from fedlabel.config import (
        Config,
        config_from_dict,
        config_to_dict,
        flatten,
        to_run_config,
        unflatten,
    )

    given = dict(parse_override(item) for item in overrides)
    values = {"data.num_clients": sites, "output_dir": output_dir, **given}
    name = values.get("algorithm.name", Config().algorithm.name)
    if name in ALGORITHMS:  # else config_from_dict names algorithm.name
        known = flatten(config_to_dict(Config(algorithm=ALGORITHMS[name].params())))
        for key in given:
            if key not in known:
                raise DeployError(
                    f"override {key}={given[key]!r}: unknown key {key!r} "
                    "(the settings of `fedlabel simulate`, e.g. algorithm.beta)"
                )
    if not Path(str(values["output_dir"])).is_absolute():
        raise DeployError(
            "output_dir must be an absolute path on the server machine, got"
            f" {values['output_dir']!r}"
        )
    cfg = config_from_dict(unflatten(values))
    path.write_text(tomli_w.dumps(unflatten(to_run_config(cfg))))
    return path


def submit(
    *, sites: int, output_dir: str, overrides: list[str] = (), env: dict[str, str] | None = None
) -> int:
    """Submit a FedLabel run with `flwr run` to the connected SuperLink; returns its run id."""
    from fedlabel.deploy_trust import admin_files
    from fedlabel.engines.flower import project_dir

    home = flwr_home(env)
    if not admin_files(home).get("sign-key"):
        raise DeployError(
            "no app-signing key, and sites run only signed apps: "
            "`fedlabel deploy connect ... --sign-key FILE`"
        )
    home.mkdir(parents=True, exist_ok=True)
    conf = run_config_file(
        sites=sites,
        output_dir=output_dir,
        overrides=list(overrides),
        path=home / "fedlabel-run.toml",
    )
    answer = flwr("run", str(project_dir()), "--run-config", str(conf), env=env, timeout=300)
    return int(answer["run-id"])


def run_state(run_id: int, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's entry of `flwr ls` (status: pending, starting, running, finished:<result>)."""
    runs = flwr("ls", "--run-id", str(run_id), env=env)["runs"]
    return runs[0]


def wait_run(
    run_id: int, *, timeout: float = 3600, poll: float = 1.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Poll the run's state until it has finished (or timeout); returns its last `flwr ls` entry."""
    deadline = time.monotonic() + timeout
    while True:
        state = run_state(run_id, env=env)
        if state["status"].startswith("finished") or time.monotonic() > deadline:
            return state
        time.sleep(poll)


def follow_run(
    run_id: int,
    *,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Echo the run's ``fedlabel:`` log lines (start-up phases, one line per round) as the
    ServerApp logs them, from `flwr log --stream`, which ends when the run has finished;
    returns the run's last `flwr ls` entry."""
    deadline = time.monotonic() + timeout
    cmd = [*TRUST, "flwr", "log", str(run_id), CONNECTION, "--stream"]
    with subprocess.Popen(
        cmd, env=flower_env(env), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                _, found, text = line.partition("fedlabel: ")
                if found:
                    echo(text.rstrip())
        finally:
            timer.cancel()
            proc.kill()
    return wait_run(run_id, timeout=max(0.0, deadline - time.monotonic()), env=env)


def demo_sites(
    out: str | Path,
    *,
    sites: int,
    per_site: int,
    label_ratio: float,
    test_samples: int,
    seed: int = 0,
) -> list[Path]:
    """Carve real Fashion-MNIST into `sites` IID site directories (per_site images each, a share
    label_ratio labeled) and, with test_samples > 0, a small server test set out/test.npz (MedMNIST
    layout; its tiny train split is unused). For trying a deployment on one machine."""
    import numpy as np

    from fedlabel.data import load_fashion_mnist, save_site

    data = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.train_labels))[: sites * per_site]
    if len(order) < sites * per_site:
        raise DeployError(
            f"Fashion-MNIST has {len(data.train_labels)} training images, fewer than {sites} x"
            f" {per_site}"
        )
    out = Path(out)
    dirs = []
    n_labeled = max(1, round(label_ratio * per_site))
    for i in range(sites):
        idx = order[i * per_site : (i + 1) * per_site]
        dirs.append(
            save_site(
                out / f"site{i + 1}",
                labeled_images=data.train_images[idx[:n_labeled]].numpy(),
                labeled_labels=data.train_labels[idx[:n_labeled]].numpy(),
                unlabeled_images=data.train_images[idx[n_labeled:]].numpy(),
            )
        )
    if test_samples:
        test = rng.permutation(len(data.test_labels))[:test_samples]
        images, labels = data.test_images[test, 0].numpy(), data.test_labels[test].numpy()
        np.savez(
            out / "test.npz",
            train_images=images[:10],
            train_labels=labels[:10],
            test_images=images,
            test_labels=labels,
        )
    return dirs


def _exec(cmd: list[str]) -> None:
    env = flower_env()
    os.execvpe(cmd[0], cmd, env)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedlabel deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "server", help="start the SuperLink behind nginx (TLS; admin-only Control API)"
    )
    s.add_argument(
        "--certs", required=True, help="directory with server.pem, server.key, admin-ca.crt"
    )
    s.add_argument(
        "--state", required=True, help="directory for the SuperLink's database and nginx's files"
    )
    s.add_argument(
        "--host", required=True, help="address to serve sites and the admin on, e.g. 0.0.0.0"
    )
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument(
        "--local-port",
        type=int,
        default=DEFAULT_LOCAL_PORT,
        help="the SuperLink's own port on 127.0.0.1",
    )
    s = sub.add_parser("connect", help="point this machine's flwr CLI at the server, as the admin")
    s.add_argument(
        "--superlink", required=True, help="HOST:PORT as named in the server certificate"
    )
    s.add_argument("--ca", required=True, help="the CA certificate (ca.crt)")
    s.add_argument("--cert", required=True, help="the admin client certificate (admin.pem)")
    s.add_argument("--key", required=True, help="its private key (admin.key)")
    s.add_argument("--sign-key", default="", help="the app-signing key for submit (admin-sign.key)")
    s = sub.add_parser("register", help="allow a site's public key; prints the node id")
    s.add_argument("public_key")
    s = sub.add_parser("unregister", help="remove a site's key for good")
    s.add_argument("node_id", type=int)
    sub.add_parser("sites", help="list registered sites and their status")
    s = sub.add_parser("join", help="start this site's SuperNode")
    s.add_argument("--superlink", required=True)
    s.add_argument("--ca", required=True)
    s.add_argument("--key", required=True, help="this site's private key")
    s.add_argument(
        "--trust",
        action="append",
        default=[],
        required=True,
        help="public key whose signed apps this site runs (admin-sign.key.pub); repeatable",
    )
    s.add_argument(
        "--site-dir", required=True, help="directory with labeled.npz (and unlabeled.npz)"
    )
    s.add_argument("--site-id", default="", help="site name (default: the directory's name)")
    s.add_argument(
        "--port", type=int, default=9094, help="local port for this SuperNode's ClientApp API"
    )
    s = sub.add_parser(
        "submit", help="submit a FedLabel run, print its round lines as they come, wait for its end"
    )
    s.add_argument(
        "--sites",
        type=int,
        required=True,
        help="number of sites the run waits for (data.num_clients)",
    )
    s.add_argument(
        "--output-dir", required=True, help="absolute path on the server machine for the results"
    )
    s.add_argument("--no-wait", action="store_true", help="print the run id and return")
    s.add_argument("--timeout", type=float, default=24 * 3600)
    s.add_argument(
        "overrides", nargs="*", help="run settings as key=value, e.g. rounds=20 clients_per_round=2"
    )
    s = sub.add_parser(
        "flwr",
        help="a flwr command as the admin, e.g. `fedlabel deploy flwr log 12 fedlabel-deploy`",
    )
    s.add_argument("args", nargs=argparse.REMAINDER)
    s = sub.add_parser(
        "demo-sites", help="write Fashion-MNIST site directories for a trial deployment"
    )
    s.add_argument("out")
    s.add_argument("--sites", type=int, default=2)
    s.add_argument("--per-site", type=int, default=1000)
    s.add_argument("--label-ratio", type=float, default=0.1)
    s.add_argument("--test-samples", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    from fedlabel.data import DataError
    from fedlabel.errors import ConfigError

    args = _parser().parse_args(argv)
    try:
        if args.cmd == "server":
            return serve(
                certs=args.certs,
                state=args.state,
                host=args.host,
                port=args.port,
                local_port=args.local_port,
            )
        elif args.cmd == "join":
            _exec(
                supernode_command(
                    superlink=args.superlink,
                    ca=args.ca,
                    key=args.key,
                    trust=args.trust,
                    site_dir=args.site_dir,
                    site_id=args.site_id,
                    port=args.port,
                )
            )
        elif args.cmd == "flwr":
            _exec([*TRUST, "flwr", *args.args])
        elif args.cmd == "connect":
            path = write_connection(
                superlink=args.superlink,
                ca=args.ca,
                cert=args.cert,
                key=args.key,
                sign_key=args.sign_key,
            )
            print(f"connection {CONNECTION} written to {path}")
        elif args.cmd == "register":
            print(register(args.public_key))
        elif args.cmd == "unregister":
            unregister(args.node_id)
        elif args.cmd == "sites":
            for node in list_sites():
                print(
                    f"{node['node-id']:>22}  {node['status']:<12}  online since {node['online-at']}"
                )
        elif args.cmd == "demo-sites":
            for d in demo_sites(
                args.out,
                sites=args.sites,
                per_site=args.per_site,
                label_ratio=args.label_ratio,
                test_samples=args.test_samples,
            ):
                print(d)
        elif args.cmd == "submit":
            run_id = submit(sites=args.sites, output_dir=args.output_dir, overrides=args.overrides)
            print(f"run {run_id} submitted; results in {args.output_dir} on the server machine")
            if args.no_wait:
                return 0
            state = follow_run(run_id, timeout=args.timeout)
            print(f"run {run_id}: {state['status']}")
            return 0 if state["status"] == "finished:completed" else 1
    except (DeployError, ConfigError, DataError) as err:
        print(f"fedlabel deploy: {err}", file=sys.stderr)
        return 2
    return 0
