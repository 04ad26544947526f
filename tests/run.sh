#!/usr/bin/env bash
# Install what the tests need (DCMTK, dicom3tools, Orthanc and its DICOMweb plugin from Debian, the package with its test extras;
# in ./.venv where the system Python refuses packages) and run them.
# Usage: bash tests/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# A Python that refuses packages (PEP 668: Debian 12, Ubuntu 24.04) gets them in ./.venv instead.
python=python3
if python3 -c 'import os, sys, sysconfig; sys.exit(sys.prefix != sys.base_prefix or not os.path.exists(
    os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  python=.venv/bin/python
fi

need_apt=()
if [ "$python" = .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
[ -x /usr/bin/storescu ] || need_apt+=(dcmtk)
[ -x /usr/bin/dciodvfy ] || need_apt+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  # Debian starts daemons it installs (orthanc); the tests run their own instances on loopback
  # ports, never the system service, so forbid service starts for the duration of the install.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    own_policy=1
    trap '$sudo_cmd rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ -n "$own_policy" ]; then
    $sudo_cmd rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

if [ "$python" = .venv/bin/python ] && [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# The dependency versions the image and install.sh ship (requirements.lock), then the package and its test extras.
"$python" -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
"$python" -m pip install -q --disable-pip-version-check -e '.[test]'
# import-linter in a virtual environment of its own (see pyproject.toml's "layers" extra);
# tests/unit/test_layers.py runs it from there.
if [ ! -x .venv-tools/bin/lint-imports ]; then
  python3 -m venv .venv-tools
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check 'import-linter>=2.0,<3'
fi
export DICOM_ROUTER_LINT_IMPORTS="$PWD/.venv-tools/bin/lint-imports"
# Static checks first, as configured in pyproject.toml: ruff's lint rules and format, mypy over router/
# (the import-layer contract runs as a test).
"$python" -m ruff check router tests benchmarks
"$python" -m ruff format --check router tests benchmarks
"$python" -m mypy
"$python" -m pytest -n 2 --dist loadgroup -q "$@"
# The integration tests again on pynetdicom as released plus the router's fixes (docs/engine.md);
# tests of the owned engine's speed changes carry the owned_engine mark and are skipped.
if [ $# -eq 0 ]; then
  echo "integration tests, engine mode stock:"
  DICOM_ROUTER_ENGINE=stock exec "$python" -m pytest -n 2 --dist loadgroup -q tests/integration
fi
