"""The server side of a deployment: Flower's SuperLink on 127.0.0.1 only, behind nginx.

Flower 1.42 serves its Fleet API (sites), Control API (register sites, submit runs) and Runtime
API (the ServerApp) on one port, and its Control API accepts every caller. nginx, on the
address the operator names, passes on
- /v1/fleet/ and /health to everyone (TLS with the server certificate; the SuperLink itself
  admits only SuperNodes whose key is registered),
- /v1/control/ only to clients presenting a certificate signed by the admin CA (403 otherwise),
- nothing else (the Runtime API stays on 127.0.0.1).
nginx reaches the SuperLink over TLS with a loopback certificate made here (state/loopback.*),
so the public certificate does not need to name 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

NGINX_MISSING = (
    "nginx is not installed (Debian: apt-get install nginx); "
    "`fedlabel deploy server` runs the SuperLink behind it"
)

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {run}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {run}/body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  client_max_body_size 0;
  proxy_http_version 1.1;
  proxy_buffering off;
  proxy_request_buffering off;
  proxy_read_timeout 1h;
  proxy_send_timeout 1h;
  proxy_set_header Host $host;
  proxy_ssl_verify on;
  proxy_ssl_trusted_certificate {loopback_crt};
  proxy_ssl_name localhost;
  server {{
    listen {listen} ssl;
    ssl_certificate {server_pem};
    ssl_certificate_key {server_key};
    ssl_client_certificate {admin_ca};
    ssl_verify_client optional;
    location /v1/fleet/ {{ proxy_pass https://127.0.0.1:{local_port}; }}
    location = /health {{ proxy_pass https://127.0.0.1:{local_port}; }}
    location /v1/control/ {{
      if ($ssl_client_verify != SUCCESS) {{ return 403 "admin client certificate required\\n"; }}
      proxy_pass https://127.0.0.1:{local_port};
    }}
    location / {{ return 403 "not served here\\n"; }}
  }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if not found:
        raise FileNotFoundError(NGINX_MISSING)
    return found


def loopback_certificate(state: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (made once, kept in state/)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    crt, key_path = state / "loopback.crt", state / "loopback.key"
    if crt.is_file() and key_path.is_file():
        return crt, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    old = os.umask(0o077)
    try:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    finally:
        os.umask(old)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def nginx_config(
    *, state: Path, certs: dict[str, str], host: str, port: int, local_port: int, loopback_crt: Path
) -> Path:
    run = state / "nginx"
    run.mkdir(parents=True, exist_ok=True)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = run / "nginx.conf"
    path.write_text(
        NGINX_CONF.format(
            run=run,
            loopback_crt=loopback_crt,
            listen=listen,
            local_port=local_port,
            server_pem=certs["server.pem"],
            server_key=certs["server.key"],
            admin_ca=certs["admin-ca.crt"],
        )
    )
    return path


def _healthy(local_port: int, loopback_crt: Path) -> bool:
    context = ssl.create_default_context(cafile=str(loopback_crt))
    try:
        with urllib.request.urlopen(
            f"https://localhost:{local_port}/health", timeout=1, context=context
        ):
            return True
    except OSError:
        return False


def serve(
    superlink: list[str],
    nginx_conf: Path,
    *,
    local_port: int,
    loopback_crt: Path,
    env: dict[str, str],
) -> int:
    """Run the SuperLink, then (once it answers on 127.0.0.1) nginx, until one of them exits or
    we are told to stop (SIGTERM, SIGINT); then stop the other. Returns the exit code of the one
    that ended first."""
    nginx = nginx_binary()

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [subprocess.Popen(superlink, env=env)]
    code = 0
    try:
        while procs[0].poll() is None and not _healthy(local_port, loopback_crt):
            time.sleep(0.3)
        if procs[0].poll() is None:
            nginx_cmd = [nginx, "-p", str(nginx_conf.parent), "-c", str(nginx_conf), "-e", "stderr"]
            procs.append(subprocess.Popen(nginx_cmd, env=env))
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        ended = next(p for p in procs if p.poll() is not None)
        code = ended.returncode
        print(
            f"fedlabel deploy server: {Path(ended.args[0]).name} exited with code {code}",
            file=sys.stderr,
        )
    except SystemExit as stopped:
        code = int(stopped.code or 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return code
