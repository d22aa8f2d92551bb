#!/usr/bin/env bash
# The test command: installs what it needs (redis-server, chromium, prometheus and Node's webhook
# verifier included), then lint, types, the docs site, all tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ensure_redis_server
ensure_chromium
ensure_prometheus
ensure_node_packages
ensure_venv "$ROOT/requirements-dev.lock"

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check . >/dev/null || { "$VENV/bin/ruff" format --diff . | head -50; exit 1; }
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== import layers (import-linter: core <- store <- ops <- jobs <- runtime)"
"$VENV/bin/lint-imports" --no-cache | tail -n 3
echo "== vulture (dead code: [tool.vulture] in pyproject.toml, the dynamic names in tests/vulture_whitelist.py)"
"$VENV/bin/vulture"
echo "== container: hadolint, compose spec (tests/system/test_container.py runs them too, with canaries)"
"$VENV/bin/hadolint" --failure-threshold style --disable-ignore-pragma Dockerfile
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
# Every page, link, anchor and API reference (mkdocstrings) must resolve: a warning fails it.
# Not --quiet: that hides the warnings from --strict too (the build then passes whatever rots);
# the log is shown only when the build fails.
echo "== docs (mkdocs build --strict)"
DOCS_SITE=$(mktemp -d)
trap 'rm -rf "$DOCS_SITE"' EXIT
if ! DOCS_LOG=$(NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$DOCS_SITE" 2>&1); then
  echo "$DOCS_LOG" >&2
  exit 1
fi
echo "== pytest (every test on the shared redis-server also checks that each key a Lua script touched was among its KEYS: TP_WATCH_KEYS, tests/declared_keys.py)"
TP_WATCH_KEYS=1 "$VENV/bin/python" -m pytest -q "$@"
