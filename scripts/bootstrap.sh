#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian machine: redis-server, a venv, the locked deps.
# Idempotent and quiet when everything is already there. Sourced by demo.sh and test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

# ensure_apt COMMAND PACKAGE... [-- WHY]: install the packages with apt-get unless COMMAND exists.
# The package lists are fetched once per run, however many packages are missing.
APT_UPDATED=""
ensure_apt() {
  local cmd="$1"; shift
  local why="" pkgs=()
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then why=" ($2)"; break; fi
    pkgs+=("$1"); shift
  done
  if command -v "$cmd" >/dev/null 2>&1; then
    return
  fi
  echo "bootstrap: $cmd not found; installing ${pkgs[*]} with apt-get$why" >&2
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "bootstrap: need root or sudo to install ${pkgs[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "bootstrap: no apt-get; install ${pkgs[*]} yourself" >&2; exit 1; }
  # apt's chatter (debconf notes and the like) goes to a log, shown only if the install fails.
  local log
  log="$(mktemp)"
  if [ -z "$APT_UPDATED" ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
    >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  rm -f "$log"
  command -v "$cmd" >/dev/null 2>&1 || { echo "bootstrap: ${pkgs[*]} install failed" >&2; exit 1; }
}

ensure_redis_server() {
  # The package starts a system service on 6379 on some images; our tests start their own.
  ensure_apt redis-server redis-server
  # redis-cli creates the Redis Cluster of tests/system/test_cluster.py (--cluster create);
  # Debian's redis-server pulls it in (redis-tools), a redis-server from elsewhere may not.
  ensure_apt redis-cli redis-tools
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

ensure_prometheus() {
  # tests/system/test_dashboard_queries.py runs the dashboard's queries and the alert rules on
  # Debian's Prometheus (promtool comes with it); the package's own service is not used.
  ensure_apt prometheus prometheus -- "for the dashboard's and alert rules' tests"
  ensure_apt promtool prometheus
}

ensure_chromium() {
  # The console's browser tests drive Debian's Chromium with Playwright (never a browser download).
  ensure_apt chromium chromium chromium-driver -- "for the console's browser tests"
}

ensure_node_packages() {
  # tests/integration/test_standard_webhooks.py verifies real deliveries with the npm
  # "standardwebhooks" library under Debian's Node: installed from tests/js/package-lock.json
  # (npm ci), again whenever the lock is newer than the install.
  ensure_apt node nodejs -- "for the webhook verifier's tests"
  ensure_apt npm npm -- "for the webhook verifier's tests"
  local dir="$ROOT/tests/js"
  local marker="$dir/node_modules/.package-lock.json"
  if [ ! -f "$marker" ] || [ "$dir/package-lock.json" -nt "$marker" ]; then
    local log
    log="$(mktemp)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1 \
      || { cat "$log" >&2; echo "bootstrap: npm ci in tests/js failed" >&2; exit 1; }
    rm -f "$log"
  fi
}
