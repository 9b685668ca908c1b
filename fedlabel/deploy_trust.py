"""Who may run what in a deployment: the admin's client certificate and app signature, and the
site's check of that signature before any of an app's code runs there (docs/deploy.md).

  python -m fedlabel.deploy_trust flwr ARGS...               Flower's `flwr` CLI as the admin
  python -m fedlabel.deploy_trust supernode KEY.pub... -- ARGS
      `flower-supernode` that runs signed apps only

Flower 1.42's own CLI cannot present a client certificate and its SuperNode verifies only apps
signed through Flower Hub, so both wrappers add one thing to Flower's unchanged commands:
- `flwr`: every Control API connection presents the admin's client certificate (the server's
  reverse proxy admits only certificates signed by the admin CA), and `flwr run` signs the app
  bundle (FAB) it builds with the admin's Ed25519 key; the signature travels as the FAB's zip
  comment, over the FAB without it, in the message format Flower's own app verification signs
  (8-byte signing time + SHA-256 of the FAB).
- `flower-supernode`: started with Flower's `--trusted-entities` (the site's trusted keys), so
  Flower runs its FAB check for every new run before the run's ClientApp is installed or started;
  the check is this module's :func:`signer`, and a refused run gets Flower's error reply.
The admin's credential files are named in $FLWR_HOME/fedlabel-admin.toml (`fedlabel deploy
connect`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import os
import ssl
import sys
import time
import tomllib
import zipfile
from logging import ERROR, INFO
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

ADMIN_FILE = "fedlabel-admin.toml"  # in $FLWR_HOME: cert, key, sign-key (absolute paths)
SIGNATURE_FORMAT = "fedlabel-fab-signature-v1"


class TrustError(ValueError):
    """A key or signature file is unusable; the message names it."""


def _message(fab: bytes, signed_at: int) -> bytes:
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    return create_message_to_sign(hashlib.sha256(fab).digest(), signed_at)


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """The key's OpenSSH fingerprint, SHA256:<base64> (as `ssh-keygen -l` prints it)."""
    openssh = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def load_public_key(path: str | Path) -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise TrustError(f"{path}: not an OpenSSH public key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TrustError(
            f"{path}: app-signing keys must be Ed25519 (ssh-keygen -t ed25519), got"
            f" {type(key).__name__}"
        )
    return key


def load_private_key(path: str | Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise TrustError(f"{path}: not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TrustError(
            f"{path}: app-signing keys must be Ed25519 (ssh-keygen -t ed25519), got"
            f" {type(key).__name__}"
        )
    return key


def sign_fab(fab: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    """The FAB with its signature as zip comment (a FAB built by Flower has none)."""
    if not fab.endswith(b"\x00\x00"):
        raise TrustError("the FAB already has a zip comment: cannot sign it")
    signed_at = int(time.time())
    signature = base64.urlsafe_b64encode(key.sign(_message(fab, signed_at))).decode()
    comment = json.dumps(
        {
            "format": SIGNATURE_FORMAT,
            "key": key_id(key.public_key()),
            "signed_at": signed_at,
            "signature": signature,
        }
    )
    return fab[:-2] + len(comment).to_bytes(2, "little") + comment.encode()


def signer(fab: bytes, trusted: dict[str, ed25519.Ed25519PublicKey]) -> tuple[str | None, str]:
    """(id of the trusted key whose signature the FAB carries, or None; what was found)."""
    try:
        comment = zipfile.ZipFile(io.BytesIO(fab)).comment
        sig = json.loads(comment) if comment else None
    except (zipfile.BadZipFile, ValueError):
        return None, "not a valid signed FAB"
    if not isinstance(sig, dict) or sig.get("format") != SIGNATURE_FORMAT:
        return None, "the app is not signed"
    if sig.get("key") not in trusted:
        return None, f"the app is signed by key {sig.get('key')}, which this site does not trust"
    unsigned = fab[: len(fab) - len(comment) - 2] + b"\x00\x00"
    try:
        signature = base64.urlsafe_b64decode(sig["signature"])
        trusted[sig["key"]].verify(signature, _message(unsigned, int(sig["signed_at"])))
    except Exception:  # noqa: BLE001 - any malformed or wrong signature is a refusal
        return None, f"the app's signature by key {sig['key']} is not valid for its content"
    return sig["key"], f"signed by trusted key {sig['key']}"


def admin_files(home: Path) -> dict[str, str]:
    path = home / ADMIN_FILE
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def _flwr_as_admin(argv: list[str]) -> int:
    """Flower's `flwr` CLI with the admin's client certificate and app signing (if configured)."""
    from flwr.cli.app import app
    from flwr.supercore.protobuf.client import ProtobufClient

    admin = admin_files(Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser())
    if admin.get("cert"):
        init = ProtobufClient.__init__

        def init_with_client_cert(self, base_url, *, verify=True, **kwargs):
            if not isinstance(verify, ssl.SSLContext):
                verify = ssl.create_default_context(
                    cafile=verify if isinstance(verify, str) else None
                )
            verify.load_cert_chain(admin["cert"], admin["key"])
            init(self, base_url, verify=verify, **kwargs)

        ProtobufClient.__init__ = init_with_client_cert
    if admin.get("sign-key"):
        key = load_private_key(admin["sign-key"])
        run = importlib.import_module("flwr.cli.run.run")
        build = run.build_fab_from_disk
        run.build_fab_from_disk = lambda path: sign_fab(build(path), key)
    sys.argv = ["flwr", *argv]
    return app()


def _supernode_running_signed_apps_only(public_keys: list[str], argv: list[str]) -> int:
    """`flower-supernode ARGS` whose FAB check accepts only apps signed by one of the keys."""
    import yaml
    from flwr.supercore import log
    from flwr.supercore.fab import Fab
    from flwr.supernode import start_client_internal as sci
    from flwr.supernode.cli import flower_supernode

    if not public_keys:
        raise TrustError("no trusted app-signing key given")
    trusted = {key_id(k): k for k in map(load_public_key, public_keys)}
    entities = (
        Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser() / "fedlabel-trusted-apps.yaml"
    )
    entities.parent.mkdir(parents=True, exist_ok=True)
    entities.write_text(
        yaml.safe_dump({kid: Path(p).read_text().strip() for kid, p in zip(trusted, public_keys)})
    )
    pull = sci._pull_and_store_message

    def pull_for_check(*, get_fab, **kwargs):
        # Flower calls its FAB check only for FABs the SuperLink marks as checkable; a FAB sent
        # with `flwr run` never is, so every FAB is marked and then checked by verify_fab below.
        def get_fab_to_check(fab_hash: str, run_id: int) -> Fab:
            fab = get_fab(fab_hash, run_id)
            return Fab(fab.hash_str, fab.content, {"valid_license": "checked by fedlabel"})

        return pull(get_fab=get_fab_to_check, **kwargs)

    def verify_fab(fab: Fab, _trusted_entities: dict[str, str]) -> bool:
        key, found = signer(fab.content, trusted)
        if key is None:
            log(
                ERROR,
                "fedlabel: REFUSED app %s: %s; none of its code runs at this site",
                fab.hash_str[:12],
                found,
            )
        else:
            log(INFO, "fedlabel: accepted app %s: %s", fab.hash_str[:12], found)
        return key is not None

    sci._pull_and_store_message = pull_for_check
    sci._verify_fab = verify_fab
    sys.argv = ["flower-supernode", *argv, "--trusted-entities", str(entities)]
    return flower_supernode()


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["flwr"]:
            return _flwr_as_admin(argv[1:])
        if argv[:1] == ["supernode"] and "--" in argv:
            cut = argv.index("--")
            return _supernode_running_signed_apps_only(argv[1:cut], argv[cut + 1 :])
    except TrustError as err:
        print(f"fedlabel deploy: {err}", file=sys.stderr)
        return 2
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
