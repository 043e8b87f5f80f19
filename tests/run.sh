#!/usr/bin/env bash
# Installs what the tests need and runs them: the README's test command.
#   - Debian packages dcmtk (storescu, dsr2html, ...), dicom3tools (dciodvfy),
#     orthanc (a real PACS) and systemd (systemd-analyze), when missing;
#   - spectnode with its test extra, into the active virtual environment, or
#     into ./.venv when none is active;
#   - then ruff (lint, import order) and mypy (types of spectnode/), as
#     configured in pyproject.toml: a finding fails the run;
#   - then pytest, one worker per core (pytest-xdist), each test file on one
#     worker so that its module fixtures are made once. Extra arguments go to
#     pytest (-n 0 runs in one process).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v storescu >/dev/null || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v Orthanc >/dev/null || missing+=(orthanc)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'

python -m ruff check spectnode tests
python -m mypy
exec python -m pytest -n auto --dist loadfile "$@"
