#!/usr/bin/env bash
# Install fedlabel and what it needs into ./.venv (idempotent; safe to rerun).
#   scripts/install.sh          runtime only
#   scripts/install.sh dev      runtime + test tools
# torch is installed FIRST and pinned, so no other requirement can pull a multi-GB CUDA build.
# GPU users: set FEDLABEL_TORCH_SPEC, e.g.
#   FEDLABEL_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
pip_install() {  # quiet pip; drop the machine-specific "Location ... is ignored" noise
  "$py" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
stamp="$venv/.fedlabel-installed-$extra-$(cat pyproject.toml scripts/install.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # shellcheck disable=SC2086
  pip_install ${FEDLABEL_TORCH_SPEC:-torch==2.13.0}
  if [ "$extra" = dev ]; then
    pip_install -e ".[dev]"
  else
    pip_install -e .
  fi
  touch "$stamp"
fi
# nginx from Debian: `fedlabel deploy server` runs the SuperLink behind it (not needed for
# simulation or at sites; FEDLABEL_SKIP_APT=1 skips both packages).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ] && [ -z "${FEDLABEL_SKIP_APT:-}" ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq nginx-light >/dev/null \
    || echo "note: could not install nginx; \`fedlabel deploy server\` needs it (apt-get install nginx)" >&2
fi
# Fashion-MNIST from Debian (the loader also downloads to a cache or reads user files).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ] && [ -z "${FEDLABEL_SKIP_APT:-}" ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "note: could not install dataset-fashion-mnist; fedlabel will try its cache/download" >&2
fi
