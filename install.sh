#!/usr/bin/env bash
# Install dicom-router into ./.venv, a virtual environment beside this file.
#
# Debian 12 and Ubuntu 24.04 refuse `pip install` into the system Python (PEP 668,
# "externally-managed-environment"); a virtual environment is the way their Python is
# meant to take packages. On them it needs the `python3-venv` package, installed here
# with apt-get (through sudo unless run as root) when it is missing.
#
# Only .venv/bin/dicom-router is meant to be run: pynetdicom also installs its own
# storescp, storescu, findscu, ... into .venv/bin, which therefore is best kept off PATH
# (DCMTK's programs of the same names are the ones the README's examples run).
#
# Usage: bash install.sh        then: .venv/bin/dicom-router serve
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "install.sh: installing python3-venv (Debian/Ubuntu) for the virtual environment" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# The dependency versions the tests ran against (checked against their hashes), then the router.
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
.venv/bin/python -m pip install -q --disable-pip-version-check .
echo "installed: $(pwd)/.venv/bin/dicom-router ($(.venv/bin/dicom-router --version 2>/dev/null || echo dicom-router))"
