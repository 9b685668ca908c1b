#!/usr/bin/env bash
# Prepare, in this checkout, the git-ignored folders that benchmarks/gpu_check.sh and
# benchmarks/gpu_accuracy.sh need on a bare GPU machine without internet (carry them with the
# working tree):
#   data/fashion-mnist/  the four Fashion-MNIST .gz files (found where fedlabel looks for them,
#                        or downloaded; checksums verified), 30 MB
#   .gpu_site/           pure-Python packages the tests need and such machines lack
#                        (hydra, omegaconf, antlr4, tomli_w), copied from .venv, 4 MB
# (The accuracy grid's finished runs travel as committed files, benchmarks/runs/.)
# Usage: benchmarks/prepare_gpu_carry.sh   (then carry: ["data", ".gpu_site"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY - <<'PY'
import shutil
from pathlib import Path

from fedlabel.data.fashion_mnist import FILES, SYSTEM_DIR, load_fashion_mnist

load_fashion_mnist()  # verifies the files (downloads them into the cache when missing)
cache = Path("~/.cache/fedlabel/fashion-mnist").expanduser()
src = next(d for d in (SYSTEM_DIR, cache) if all((d / f).is_file() for f in FILES.values()))
dst = Path("data/fashion-mnist")
dst.mkdir(parents=True, exist_ok=True)
for f in FILES.values():
    shutil.copyfile(src / f, dst / f)
load_fashion_mnist(root=str(dst), download=False)  # the copies verify
print(f"data/fashion-mnist: copied from {src}")
PY
site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf .gpu_site && mkdir -p .gpu_site
for pkg in hydra omegaconf antlr4 tomli_w; do cp -r "$site/$pkg" .gpu_site/; done
find .gpu_site -name __pycache__ -prune -exec rm -rf {} +
du -sh data .gpu_site
