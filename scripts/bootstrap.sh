#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian machine: redis-server, a venv, the locked deps.
# Idempotent and quiet when everything is already there. Sourced by demo.sh and test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return
  fi
  echo "bootstrap: redis-server not found; installing it with apt-get" >&2
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "bootstrap: need root or sudo to install redis-server" >&2; exit 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "bootstrap: no apt-get; install redis-server yourself" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package starts a system service on 6379 on some images; our tests start their own.
  command -v redis-server >/dev/null 2>&1 || { echo "bootstrap: redis-server install failed" >&2; exit 1; }
}

ensure_venv() {
  local lock="$1"  # requirements.lock or requirements-dev.lock
  local stamp="$VENV/.installed-$(basename "$lock")"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] \
     || [ ! -x "$VENV/bin/threads-poller" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$lock"
    # The editable install builds with setuptools>=69 and wheel (pyproject.toml): reuse the
    # venv's when the lock installed them (the dev lock does), else let pip fetch them in an
    # isolated build. Never try the venv's own old setuptools first: that is the failed
    # "invalid command 'bdist_wheel'" build a newcomer would see.
    local isolation="--no-build-isolation"
    "$VENV/bin/python" -c 'import setuptools, wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 69)' \
      >/dev/null 2>&1 || isolation=""
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps $isolation -e "$ROOT"
    touch "$stamp"
  fi
}

ensure_chromium() {
  # The console's browser tests drive Debian's Chromium with Playwright (never a browser download).
  if command -v chromium >/dev/null 2>&1; then
    return
  fi
  echo "bootstrap: chromium not found; installing it with apt-get (for the console's browser tests)" >&2
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "bootstrap: need root or sudo to install chromium" >&2; exit 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "bootstrap: no apt-get; install chromium yourself" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  command -v chromium >/dev/null 2>&1 || { echo "bootstrap: chromium install failed" >&2; exit 1; }
}
