#!/usr/bin/env bash
# Set-up on a fresh Debian 12 machine (run as root or with sudo): system libraries,
# then a .venv at the repository root with sparsemm and its test tools installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libsuitesparse-dev libopenblas0-pthread; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python proto/generate.py --force >/dev/null  # gRPC stubs with the venv's protoc
.venv/bin/python -c "import sksparse.cholmod, sparsemm.solver" >/dev/null
