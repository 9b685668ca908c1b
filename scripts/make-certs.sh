#!/usr/bin/env bash
# Test credentials for a fedlabel deployment (never for production; see docs/deploy.md).
#
#   scripts/make-certs.sh OUT_DIR [SITES] [EXTRA_SAN ...]
#
# OUT_DIR/ca.crt, ca.key            a private certificate authority (keep ca.key off the servers)
# OUT_DIR/server.pem, server.key    the SuperLink's TLS certificate, valid for localhost,
#                                   127.0.0.1, ::1, "superlink" (its Docker service name) and
#                                   every EXTRA_SAN (a DNS name or an IP address)
# OUT_DIR/site1.key, site1.key.pub  one SuperNode authentication key pair per site (ECDSA P-384,
# ...                               OpenSSH format, as Flower expects); the .pub is registered
#                                   with `fedlabel deploy register`, the private key stays at the site
# OUT_DIR/admin-ca.crt, admin-ca.key   the admin CA: the server admits to its Control API only client
#                                   certificates it signed (keep admin-ca.key with the admin)
# OUT_DIR/admin.pem, admin.key      the admin's client certificate (the admin credential)
# OUT_DIR/admin-sign.key, .pub      the admin's app-signing key (Ed25519, OpenSSH format); every site
#                                   runs only apps signed by a key it trusts (`join --trust admin-sign.key.pub`)
# Needs openssl and ssh-keygen (Debian: openssl, openssh-client). Existing files are kept.
set -euo pipefail

out=${1:?usage: scripts/make-certs.sh OUT_DIR [SITES] [EXTRA_SAN ...]}
sites=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
days=${FEDLABEL_CERT_DAYS:-365}

for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "make-certs.sh: $tool is missing (apt-get install openssl openssh-client)" >&2; exit 1; }
done
[[ "$sites" =~ ^[0-9]+$ ]] || { echo "make-certs.sh: SITES must be a number, got '$sites'" >&2; exit 1; }
mkdir -p "$out"
umask 077

san="DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1"
for extra in "$@"; do
  if [[ "$extra" =~ ^[0-9.]+$ || "$extra" == *:* ]]; then san+=",IP:$extra"; else san+=",DNS:$extra"; fi
done

if [[ ! -f "$out/ca.crt" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days "$days" \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/O=fedlabel test CA/CN=fedlabel test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
if [[ ! -f "$out/server.pem" ]]; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -keyout "$out/server.key" -out "$out/server.csr" \
    -subj "/O=fedlabel/CN=localhost" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" > "$out/server.ext"
  openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
  rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
fi
if [[ ! -f "$out/admin-ca.crt" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days "$days" \
    -keyout "$out/admin-ca.key" -out "$out/admin-ca.crt" -subj "/O=fedlabel admin CA/CN=fedlabel admin CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
if [[ ! -f "$out/admin.pem" ]]; then
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout "$out/admin.key" -out "$out/admin.csr" -subj "/O=fedlabel/CN=fedlabel admin" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > "$out/admin.ext"
  openssl x509 -req -in "$out/admin.csr" -CA "$out/admin-ca.crt" -CAkey "$out/admin-ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$out/admin.ext" -out "$out/admin.pem" 2>/dev/null
  rm -f "$out/admin.csr" "$out/admin.ext" "$out/admin-ca.srl"
fi
[[ -f "$out/admin-sign.key" ]] \
  || ssh-keygen -q -t ed25519 -N "" -C "fedlabel admin app signing" -f "$out/admin-sign.key"
for i in $(seq 1 "$sites"); do
  [[ -f "$out/site$i.key" ]] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedlabel site$i" -f "$out/site$i.key"
done
chmod 644 "$out"/*.crt "$out"/*.pem "$out"/*.pub 2>/dev/null || true
echo "credentials in $out: ca.crt, server.pem, server.key, admin-ca.crt, admin.pem, admin.key, admin-sign.key(.pub),"
echo "  site1..site$sites key pairs (server SAN $san)"
