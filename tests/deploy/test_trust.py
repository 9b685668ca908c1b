"""App signatures without processes: a FAB is accepted only when it carries a valid signature by
a trusted key over exactly its content; the admin's and the site's key files are checked with
the file and the problem named."""

import io
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedlabel.deploy import DeployError, serve, supernode_command
from fedlabel.deploy_trust import TrustError, key_id, load_public_key, sign_fab, signer


def _fab() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", "[project]\nname = 'x'\n")
    return buf.getvalue()


def test_only_a_valid_signature_by_a_trusted_key_is_accepted():
    admin, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    trusted = {key_id(admin.public_key()): admin.public_key()}
    signed = sign_fab(_fab(), admin)
    assert zipfile.ZipFile(io.BytesIO(signed)).read("pyproject.toml")  # still a valid FAB
    assert signer(signed, trusted)[0] == key_id(admin.public_key())
    assert signer(_fab(), trusted) == (None, "the app is not signed")
    assert "which this site does not trust" in signer(sign_fab(_fab(), other), trusted)[1]
    tampered = signed.replace(b"name = 'x'", b"name = 'y'")
    assert "not valid for its content" in signer(tampered, trusted)[1]
    assert signer(b"not a zip", trusted) == (None, "not a valid signed FAB")


def test_key_files_are_checked(tmp_path):
    (tmp_path / "rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x\n")
    with pytest.raises(TrustError, match="rsa.pub: not an OpenSSH public key"):
        load_public_key(tmp_path / "rsa.pub")
    with pytest.raises(DeployError, match="trusted app-signing key .*missing.pub is missing"):
        supernode_command(
            superlink="h:1", ca="ca", key="k", trust=[tmp_path / "missing.pub"], site_dir=tmp_path
        )
    with pytest.raises(DeployError, match="--trust"):
        supernode_command(superlink="h:1", ca="ca", key="k", trust=[], site_dir=tmp_path)


def test_server_needs_the_admin_ca(tmp_path):
    (tmp_path / "server.pem").write_text("x")
    (tmp_path / "server.key").write_text("x")
    with pytest.raises(DeployError, match="admin CA certificate .*admin-ca.crt is missing"):
        serve(certs=tmp_path, state=tmp_path / "state", host="127.0.0.1", port=1, local_port=2)
