#!/usr/bin/env bash
# The end-to-end demo: local Redis (started if REDIS_URL does not answer), the built-in Threads
# API simulator, a real worker; no credentials needed. Extra arguments go to `threads-poller demo`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ensure_redis_server
ensure_venv "$ROOT/requirements.lock"
exec "$VENV/bin/threads-poller" demo "$@"
