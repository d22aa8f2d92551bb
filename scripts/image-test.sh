#!/usr/bin/env bash
# The image, built and run: a container engine, the Dockerfile built, Redis + the simulator + a
# worker as containers, and the compose demo. Root, Debian; .ci/run calls it after the tests.
#
#   bash scripts/image-test.sh     # IMAGE_TEST_KEEP=1 keeps the engine's data and the logs
#
# 1. engine: a private dockerd (Debian's docker.io, installed when missing): its own data root,
#    exec root and socket under $WORK, so nothing of a system engine is touched; --iptables=false
#    and no default bridge (no NAT rules on the host: containers reach each other over a
#    user-defined network, nothing else); builds use --network host.
# 2. base images: pulled when a registry answers; where none does (only package registries are
#    reachable on this project's machines), a STAND-IN of the same Debian release and Python is
#    built with debootstrap and tagged as the base the Dockerfile names (and one for redis:7),
#    and the output says so.
# 3. build: both targets, with the host's CA certificates that the base lacks (a TLS-intercepting
#    proxy's) and PIP_INDEX_URL, if set, passed as build args (see the Dockerfile).
# 4. smoke test: containers reach their final states, the HEALTHCHECKs turn healthy, the worker
#    runs as uid 10001, `docker stop` with a check in flight exits 0 and finishes the check, a
#    stop with Redis down exits 0 or 1 in JSON lines;
# 5. Kubernetes: the worker and serve Deployments' containers (user, read-only root, env and
#    secret files as deploy/kubernetes/ gives them) and their probes, healthy and with Redis
#    gone; then the compose demo, as docs/deploying.md says.
# Exit 0 only when all of it passed; the engine is stopped and its data removed on exit.
# shellcheck disable=SC2016 # single-quoted scripts that run in the containers, not here
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${IMAGE_TEST_DIR:-/var/tmp/threads-poller-image-test}"
SOCK="$WORK/docker.sock"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE=threads-poller:local            # the tags docker-compose.yml uses, so compose builds nothing
SIM_IMAGE=threads-poller-simulator:local
NET=tp-smoke
T0=$SECONDS
export DOCKER_HOST="unix://$SOCK"

say() { printf '%s\n' "$*"; }
step() {
  STEP_T=$SECONDS
  say ""
  say "== $* (at $((SECONDS - T0)) s)"
}
took() { say "   ok: $* ($((SECONDS - STEP_T)) s)"; }
fail() {
  say "FAIL: $*"
  exit 1
}
# A command's output goes to a log; on failure its tail is shown and the test fails.
quiet() {
  local log="$1"
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" | sed 's/^/   | /'
    fail "$* (log: $log)"
  fi
}

cleanup() {
  local code=$?
  if [ -S "$SOCK" ] && [ -n "${DOCKER:-}" ]; then
    if [ "$code" != 0 ]; then
      for c in $("$DOCKER" ps -aq 2>/dev/null); do
        say "--- logs of $("$DOCKER" inspect -f '{{.Name}}' "$c" 2>/dev/null) (last 15 lines)"
        "$DOCKER" logs --tail 15 "$c" 2>&1 | cut -c1-300 | sed 's/^/   | /' || true
      done
    fi
    "$DOCKER" ps -aq 2>/dev/null | xargs -r "$DOCKER" rm -f >/dev/null 2>&1 || true
  fi
  if [ -f "$WORK/dockerd.pid" ]; then
    local pid
    pid="$(cat "$WORK/dockerd.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  # A dockerd that did not get to clean up leaves mounts (netns, overlays) under its roots.
  awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l || true
  if [ "${IMAGE_TEST_KEEP:-0}" = 1 ] || [ "$code" != 0 ]; then
    say "image-test: engine stopped; data and logs kept in $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1))"
  else
    rm -rf "$WORK"
    say "image-test: engine stopped, $WORK removed"
  fi
  exit "$code"
}

[ "$(id -u)" = 0 ] || fail "needs root (a private dockerd, apt-get, debootstrap)"
if [ -f "$WORK/dockerd.pid" ] && kill -0 "$(cat "$WORK/dockerd.pid")" 2>/dev/null; then
  fail "a dockerd of an earlier run is still running (pid $(cat "$WORK/dockerd.pid")); stop it first"
fi
rm -rf "$WORK"
mkdir -p "$WORK/logs"
trap cleanup EXIT

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${APT_UPDATED:-}" ]; then
    quiet "$WORK/logs/apt-update.log" apt-get update -qq
    APT_UPDATED=1
  fi
  quiet "$WORK/logs/apt-install.log" apt-get install -y -qq --no-install-recommends "$@"
}

# ----- 1. the engine ---------------------------------------------------------------------------
step "engine"
if ! command -v dockerd >/dev/null 2>&1; then
  say "   dockerd missing: apt-get install docker.io"
  apt_install docker.io
fi
# The client shipped with dockerd (Debian's /usr/bin/docker): it has BuildKit built in. A newer
# client without the buildx plugin (such as a bare /usr/local/bin/docker) has only the
# deprecated legacy builder, which builds this Dockerfile too.
# IMAGE_TEST_DOCKER: another client (e.g. /usr/local/bin/docker, to try the legacy builder).
DOCKER="${IMAGE_TEST_DOCKER:-$(command -v /usr/bin/docker docker | head -n 1)}"
[ -n "$DOCKER" ] || fail "no docker client next to dockerd"
# --dns-opt: with no NAT the engine's DNS cannot reach an upstream server, so the lookup of a
# name that is gone (a stopped Redis) would take glibc's 2 x 5 s instead of failing at once as
# on a normal host; 1 s, once, is closer to that.
dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --host "unix://$SOCK" \
  --pidfile "$WORK/dockerd.pid" --iptables=false --ip-masq=false --bridge=none \
  --dns-opt timeout:1 --dns-opt attempts:1 \
  ${IMAGE_TEST_STORAGE_DRIVER:+--storage-driver "$IMAGE_TEST_STORAGE_DRIVER"} \
  >"$WORK/logs/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do
  "$DOCKER" info >/dev/null 2>&1 && break
  sleep 1
done
if ! "$DOCKER" info >/dev/null 2>&1; then
  tail -n 30 "$WORK/logs/dockerd.log" | sed 's/^/   | /'
  fail "dockerd did not start (log above: $WORK/logs/dockerd.log)"
fi
say "   $("$DOCKER" version --format 'client {{.Client.Version}}, dockerd {{.Server.Version}}')," \
  "$("$DOCKER" info --format 'storage {{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}')"
if "$DOCKER" buildx version >/dev/null 2>&1; then
  BUILDER="BuildKit (buildx)"
elif [ "$("$DOCKER" version --format '{{.Client.Version}}' | cut -d. -f1)" -lt 23 ]; then
  export DOCKER_BUILDKIT=1
  BUILDER="BuildKit (the client's own)"
else
  export DOCKER_BUILDKIT=0
  BUILDER="the legacy builder (no buildx plugin)"
fi
took "engine up, builds with $BUILDER"

# ----- 2. base images --------------------------------------------------------------------------
step "base images"
BASE="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$ROOT/Dockerfile")"
REDIS_IMAGE="$(sed -n 's/^ *image: \(redis:.*\)$/\1/p' "$ROOT/docker-compose.yml" | head -n 1)"
if [ -z "$BASE" ] || [ -z "$REDIS_IMAGE" ]; then fail "cannot read the base images' names"; fi

# python:3.11-slim-bookworm -> 3.11 and bookworm
py_version="$(sed -n 's/^python:\([0-9]*\.[0-9]*\)-.*/\1/p' <<<"$BASE")"
release="${BASE##*-}"

standin_python() {
  apt_install debootstrap
  local rootfs="$WORK/rootfs"
  quiet "$WORK/logs/debootstrap.log" debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates "$release" "$rootfs" "$MIRROR"
  local have
  have="$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ "$have" = "$py_version" ] || fail "Debian $release has Python $have, the base names $py_version"
  # The official image's paths: python and python3 in /usr/local/bin.
  ln -s /usr/bin/python3 "$rootfs/usr/local/bin/python"
  ln -s /usr/bin/python3 "$rootfs/usr/local/bin/python3"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  say "   STAND-IN: $BASE cannot be pulled here; built instead with debootstrap: Debian $release" \
    "minbase from $MIRROR + python3 $(
      "$DOCKER" run --rm "$BASE" python3 -c 'import platform; print(platform.python_version())'
    ), imported and tagged $BASE. The images below are built on this stand-in, not on the official image."
}

standin_redis() {
  # Debian's redis-server on the stand-in base, shaped like the official image: redis-server on
  # PATH, /data its working directory, run as the redis user. Protected mode off as there
  # (compose gives it a password anyway).
  quiet "$WORK/logs/build-redis.log" "$DOCKER" build --network host -t "$REDIS_IMAGE" - <<EOF
FROM $BASE
RUN DEBIAN_FRONTEND=noninteractive apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
EOF
  say "   STAND-IN: $REDIS_IMAGE cannot be pulled here; built instead: Debian's redis-server" \
    "$("$DOCKER" run --rm "$REDIS_IMAGE" redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on the $BASE stand-in, tagged $REDIS_IMAGE."
}

for image in "$BASE" "$REDIS_IMAGE"; do
  if timeout 300 "$DOCKER" pull -q "$image" >"$WORK/logs/pull.log" 2>&1; then
    say "   pulled $image"
  elif [ "$image" = "$BASE" ]; then
    say "   cannot pull $image: $(tail -n 1 "$WORK/logs/pull.log" | cut -c1-160)"
    standin_python
  else
    standin_redis
  fi
done
took "base images ready"

# ----- 3. build ----------------------------------------------------------------------------------
step "build ($BUILDER, --network host)"
# The CA certificates pip on this host trusts that the base image does not: what a TLS-
# intercepting proxy needs. The bundle pip uses here: PIP_CERT, else the system's.
host_bundle="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
"$DOCKER" run --rm --entrypoint cat "$BASE" /etc/ssl/certs/ca-certificates.crt >"$WORK/base-ca.pem"
python3 - "$host_bundle" "$WORK/base-ca.pem" >"$WORK/extra-ca.pem" <<'EOF'
import re
import sys

def certs(path):
    with open(path, encoding="ascii", errors="replace") as f:
        return re.findall(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----", f.read())

known = {"".join(c.split()) for c in certs(sys.argv[2])}
print("\n".join(c for c in certs(sys.argv[1]) if "".join(c.split()) not in known))
EOF
extra_count="$(grep -c 'BEGIN CERTIFICATE' "$WORK/extra-ca.pem" || true)"
[ "$(wc -c <"$WORK/extra-ca.pem")" -lt 100000 ] || fail "too many extra CA certificates for a build arg"
build_args=(--network host --build-arg EXTRA_CA_CERTS="$(cat "$WORK/extra-ca.pem")")
say "   EXTRA_CA_CERTS: $extra_count certificate(s) of $host_bundle that the base image lacks"
if [ -n "${PIP_INDEX_URL:-}" ]; then
  build_args+=(--build-arg PIP_INDEX_URL="$PIP_INDEX_URL")
  # shellcheck disable=SC2001 # a regex: the URL's credentials, if any
  say "   PIP_INDEX_URL: $(sed 's#//[^/@]*@#//***@#' <<<"$PIP_INDEX_URL")"
fi
progress=()
[ "$DOCKER_BUILDKIT" = 0 ] || progress=(--progress plain)
build() {
  local log="$1"
  shift
  local t=$SECONDS
  quiet "$log" "$DOCKER" build "${progress[@]}" "${build_args[@]}" "$@" "$ROOT"
  if grep -E -i '^(#[0-9]+ [0-9.]+ )?(error|warning)|traceback' "$log" | grep -v -i 'debconf'; then
    fail "the build printed errors or warnings (log: $log)"
  fi
  say "   $* : $((SECONDS - t)) s"
}
build "$WORK/logs/build-worker.log" -t "$IMAGE"
build "$WORK/logs/build-simulator.log" --target simulator -t "$SIM_IMAGE"
# The steps, once (BuildKit prints each twice: started and done).
grep -E '^#[0-9]+ \[(builder|runtime|worker|simulator) ' "$WORK/logs/build-worker.log" \
  | sed -E 's/^#[0-9]+ //' | awk '!seen[$0]++' | cut -c1-110 | sed 's/^/   /' || true
size_mb() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1000000}'; }
took "built: $IMAGE $(size_mb "$IMAGE"), $SIM_IMAGE $(size_mb "$SIM_IMAGE") (base $BASE: $(size_mb "$BASE"))"

# ----- 4. smoke test -----------------------------------------------------------------------------
step "smoke test: Redis, the simulator and a worker as containers"
PASSWORD="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
REDIS_URL="redis://:$PASSWORD@redis:6379/0"
"$DOCKER" network create "$NET" >/dev/null
# Redis as docker-compose.yml runs it.
"$DOCKER" run -d --name tp-redis --network "$NET" --network-alias redis -e REDISCLI_AUTH="$PASSWORD" \
  "$REDIS_IMAGE" redis-server --appendonly yes --appendfsync always --maxmemory 64mb \
  --maxmemory-policy noeviction --requirepass "$PASSWORD" >/dev/null
redis_ping() { "$DOCKER" exec "$@" tp-redis sh -c '[ "$(redis-cli ping)" = PONG ]'; }
for _ in $(seq 1 30); do redis_ping && break; sleep 0.5; done
redis_ping || fail "Redis does not answer PONG"
# The compose healthcheck's command refuses anything but PONG: here NOAUTH.
if redis_ping -e REDISCLI_AUTH=wrong 2>/dev/null; then
  fail "the Redis healthcheck passed with a wrong password"
fi
say "   Redis: PONG; the compose healthcheck's test fails with a wrong password (NOAUTH)"

"$DOCKER" run -d --name tp-sim --network "$NET" --network-alias simulator "$SIM_IMAGE" \
  simulate --host 0.0.0.0 --port 8787 --default-script IN_PROGRESS,FINISHED \
  --script 1790000000000002=IN_PROGRESS,ERROR:FAILED_DOWNLOADING_VIDEO \
  --script 1790000000000003=notfound --script 1790000000000004=IN_PROGRESS,PUBLISHED \
  --script '1790000000000009=slow:5:FINISHED' >/dev/null

worker_env=(-e REDIS_URL="$REDIS_URL" -e THREADS_API_BASE_URL=http://simulator:8787/v1.0
  -e THREADS_ACCESS_TOKEN=smoke-test-token -e POLL_INTERVAL_SECONDS=1 -e POLL_MAX_SECONDS=8)
# As docs/deploying.md runs it: the stop timeout it recommends.
start_worker() {
  "$DOCKER" run -d --name "$1" --network "$NET" --stop-timeout 30 "${worker_env[@]}" "$IMAGE" >/dev/null
}
start_worker tp-worker
cli() { "$DOCKER" run --rm --network "$NET" -e REDIS_URL="$REDIS_URL" "$IMAGE" "$@"; }
health() { "$DOCKER" inspect -f '{{.State.Health.Status}}' "$1"; }
wait_healthy() {
  local t=$SECONDS
  for _ in $(seq 1 90); do
    [ "$(health "$1")" = healthy ] && { say "   $1: HEALTHCHECK healthy after $((SECONDS - t)) s"; return; }
    sleep 1
  done
  fail "$1 is $(health "$1") after 90 s"
}
wait_healthy tp-sim

ids="1790000000000001 1790000000000002 1790000000000003 1790000000000004"
# shellcheck disable=SC2086 # word splitting of the ids is meant
cli enqueue $ids | sed 's/^/   /'
out="$("$DOCKER" run --rm --network "$NET" -e REDIS_URL="$REDIS_URL" -e ids="$ids" --entrypoint sh "$IMAGE" \
  -c 'for id in $ids; do threads-poller wait --timeout 60 "$id"; done; exit 0')"
say "$out" | cut -c1-120 | sed 's/^/   /'
for expect in "1790000000000001  FINISHED (final)" "1790000000000002  ERROR (final)" \
  "1790000000000003  FAILED (final)" "1790000000000004  PUBLISHED (final)"; do
  grep -q "^$expect" <<<"$out" || fail "expected '$expect'"
done
say "   4 containers reached their final states (FINISHED, ERROR, FAILED, PUBLISHED)"

wait_healthy tp-worker
uid="$("$DOCKER" exec tp-worker id -u)"
proc_uid="$("$DOCKER" exec tp-worker awk '/^Uid:/ {print $2, $3, $4, $5}' /proc/1/status)"
if [ "$uid" != 10001 ] || [ "$proc_uid" != "10001 10001 10001 10001" ]; then
  fail "the worker runs as uid $uid (process: $proc_uid), not 10001"
fi
say "   the worker process (PID 1) runs as uid 10001 (real, effective, saved, fs)"

# docker stop with a check in flight: its answer comes 5 s after the call; the drain lets it
# finish (int(HTTP_TIMEOUT_SECONDS) + 2 = 12 s), so the poll is recorded before the exit.
cli enqueue 1790000000000009 >/dev/null
calls() {
  "$DOCKER" exec tp-sim python -c 'import json, sys, urllib.request as u
print(len(json.load(u.urlopen("http://127.0.0.1:8787/_sim/calls/" + sys.argv[1], timeout=3))))' "$1"
}
for _ in $(seq 1 50); do [ "$(calls 1790000000000009)" -ge 1 ] && break; sleep 0.2; done
[ "$(calls 1790000000000009)" -ge 1 ] || fail "the slow check never reached the simulator"
t=$SECONDS
"$DOCKER" stop tp-worker >/dev/null
stop_s=$((SECONDS - t))
code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' tp-worker)"
[ "$code" = 0 ] || fail "docker stop with a check in flight: exit $code after $stop_s s"
cli status 1790000000000009 | grep -q "FINISHED (final)" || fail "the check in flight was not recorded"
check_logs() {
  "$DOCKER" logs "$1" >"$WORK/logs/$1.log" 2>&1
  python3 - "$WORK/logs/$1.log" <<'EOF' || fail "$1 printed something else than JSON lines"
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
bad = [line for line in lines if not line.startswith("{") or "Traceback" in line]
for line in lines:
    if line.startswith("{"):
        json.loads(line)
for line in bad[:10]:
    print("   | " + line[:200])
sys.exit(1 if bad or not lines else 0)
EOF
}
check_logs tp-worker
grep '"shutdown on SIGTERM' "$WORK/logs/tp-worker.log" | grep -q '"running": 1' \
  || fail "no check was in flight when SIGTERM came"
say "   docker stop with a check in flight: exit 0 after $stop_s s, the check recorded (FINISHED)," \
  "$(wc -l <"$WORK/logs/tp-worker.log") log lines, all JSON"

# docker stop with Redis down: exit 0 or 1, in JSON lines, within the stop timeout.
start_worker tp-worker-2
for _ in $(seq 1 60); do "$DOCKER" logs tp-worker-2 2>&1 | grep -q '"worker started"' && break; sleep 0.5; done
"$DOCKER" stop tp-redis >/dev/null
sleep 2
t=$SECONDS
"$DOCKER" stop tp-worker-2 >/dev/null
stop_s=$((SECONDS - t))
code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' tp-worker-2)"
case "$code" in 0 | 1) ;; *) fail "docker stop with Redis down: exit $code after $stop_s s" ;; esac
check_logs tp-worker-2
say "   docker stop with Redis down: exit $code after $stop_s s, all log lines JSON:"
grep -E '"(warning|error)"|"worker stopped"' "$WORK/logs/tp-worker-2.log" \
  | python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("     %s %s: %s" % (r["level"], r["logger"], r["msg"][:100]))'
"$DOCKER" rm -f tp-redis tp-sim tp-worker tp-worker-2 >/dev/null
"$DOCKER" network rm "$NET" >/dev/null
took "smoke test passed"

# ----- 5. Kubernetes ---------------------------------------------------------------------------------
step "kubernetes: the manifests' pods as containers, their probes run in them"
# Read from deploy/kubernetes/ (rendered as kustomize would, tests/kubernetes.py), with the dev
# venv that scripts/test.sh set up (.ci/run runs it first).
KPY="${VENV:-$ROOT/.venv}/bin/python"
[ -x "$KPY" ] || fail "no $KPY: run scripts/test.sh first (it makes the venv the manifests are read with)"
pod_json() { (cd "$ROOT" && "$KPY" -m tests.kubernetes pod "$1"); }
pod_json threads-poller-worker >"$WORK/k8s-worker.json" || fail "cannot read the worker Deployment"
pod_json threads-poller-serve >"$WORK/k8s-serve.json" || fail "cannot read the serve Deployment"
# One field of a pod's JSON: a string as is, anything else as JSON.
field() {
  python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[k]
print(v if isinstance(v, str) else json.dumps(v))' "$@"
}
# A probe's exec command as words (one per line), for "${words[@]}".
probe_words() {
  python3 -c 'import json, sys
print("\n".join(json.load(open(sys.argv[1]))["probes"][sys.argv[2]]["exec"]["command"]))' "$@"
}
# The Secret as the kubelet mounts it with fsGroup and defaultMode 0440: root-owned files of
# group fsGroup, read-only. Keys the manifests mount; values made up here.
secrets="$WORK/k8s-secrets"
mkdir -p "$secrets"
printf '%s\n' "$PASSWORD" >"$secrets/redis-password"
printf '%s\n' smoke-test-token >"$secrets/threads-access-token"
printf '%s\n' "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" >"$secrets/api-keys"
chown "0:$(field "$WORK/k8s-worker.json" fs_group)" "$secrets"/*
chmod 0440 "$secrets"/*
# docker run options for a pod of $1's JSON: its user, securityContext, env and secret mount.
pod_opts() {
  python3 - "$1" "$secrets" <<'PY'
import json, os, sys
pod = json.load(open(sys.argv[1]))
uid, gid = pod["user"]
opts = ["--user", f"{uid}:{gid}", "--group-add", str(pod["fs_group"]), "--read-only",
        "--tmpfs", "/tmp:size=16m", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
dirs = {os.path.dirname(s["path"]) for s in pod["secrets"]}
for d in sorted(dirs):
    opts += ["-v", f"{sys.argv[2]}:{d}:ro"]
for k, v in pod["env"].items():
    opts += ["-e", f"{k}={v}"]
print("\n".join(opts))
PY
}
mapfile -t worker_opts < <(pod_opts "$WORK/k8s-worker.json")
mapfile -t serve_opts < <(pod_opts "$WORK/k8s-serve.json")
mapfile -t worker_args < <(field "$WORK/k8s-worker.json" args | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
mapfile -t serve_args < <(field "$WORK/k8s-serve.json" args | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
mapfile -t liveness < <(probe_words "$WORK/k8s-worker.json" livenessProbe)
mapfile -t readiness < <(probe_words "$WORK/k8s-worker.json" readinessProbe)
say "   worker: ${worker_args[*]}; liveness: ${liveness[*]}; readiness: ${readiness[*]}"
"$DOCKER" network create "$NET" >/dev/null
# The ConfigMap's REDIS_URL names "redis": this one, with the Secret's password.
start_k8s_redis() {
  "$DOCKER" run -d --name tp-k8s-redis --network "$NET" --network-alias redis -e REDISCLI_AUTH="$PASSWORD" \
    "$REDIS_IMAGE" redis-server --requirepass "$PASSWORD" >/dev/null
  for _ in $(seq 1 30); do redis_k8s_ping && return; sleep 0.5; done
  fail "the Kubernetes step's Redis does not answer PONG"
}
redis_k8s_ping() { "$DOCKER" exec tp-k8s-redis sh -c '[ "$(redis-cli ping)" = PONG ]' 2>/dev/null; }
start_k8s_redis
"$DOCKER" run -d --name tp-k8s-worker --network "$NET" "${worker_opts[@]}" "$IMAGE" "${worker_args[@]}" >/dev/null
# A container of the same pod spec with no worker in it: the probes must not vouch for it
# because another container's worker beats in the same Redis.
"$DOCKER" run -d --name tp-k8s-idle --network "$NET" "${worker_opts[@]}" --entrypoint sleep "$IMAGE" 600 >/dev/null
probe() { # container, then the command; prints the output, returns the exit code
  local out code=0
  out="$("$DOCKER" exec "$1" "${@:2}" 2>&1)" || code=$?
  printf '%s' "$out" | head -n 1 | cut -c1-150
  return "$code"
}
ready=""
for _ in $(seq 1 60); do
  if out="$(probe tp-k8s-worker "${readiness[@]}")"; then ready=1; break; fi
  sleep 1
done
[ -n "$ready" ] || fail "readiness never passed in the worker's container: $out"
say "   readiness, worker healthy: exit 0 ($out)"
out="$(probe tp-k8s-worker "${liveness[@]}")" || fail "liveness failed on a healthy worker: $out"
say "   liveness, worker healthy: exit 0"
code=0; out="$(probe tp-k8s-idle "${liveness[@]}")" || code=$?
[ "$code" = 1 ] || fail "liveness in a container without a worker: exit $code, not 1 ($out)"
code=0; out="$(probe tp-k8s-idle "${readiness[@]}")" || code=$?
[ "$code" = 1 ] || fail "readiness in a container without a worker: exit $code, not 1 ($out)"
say "   both, in a container of the pod spec without a worker: exit 1 ($out)"
uid="$("$DOCKER" exec tp-k8s-worker awk '/^Uid:/ {print $2}' /proc/1/status)"
[ "$uid" = "$(field "$WORK/k8s-worker.json" user | python3 -c 'import json, sys; print(json.load(sys.stdin)[0])')" ] \
  || fail "the worker runs as uid $uid"
if "$DOCKER" exec tp-k8s-worker sh -c 'touch /app/x' 2>/dev/null; then fail "the root filesystem is writable"; fi

# serve, as its Deployment runs it: its httpGet probes asked from inside the container.
"$DOCKER" run -d --name tp-k8s-serve --network "$NET" "${serve_opts[@]}" "$IMAGE" "${serve_args[@]}" >/dev/null
http_probe() { # probe name: GET of its path on its named port, from inside serve's container
  local path port
  path="$(field "$WORK/k8s-serve.json" probes "$1" httpGet path)"
  port="$(field "$WORK/k8s-serve.json" ports "$(field "$WORK/k8s-serve.json" probes "$1" httpGet port)")"
  "$DOCKER" exec tp-k8s-serve python -c 'import sys, urllib.request as u
u.urlopen("http://127.0.0.1:%s%s" % (sys.argv[1], sys.argv[2]), timeout=3)' "$port" "$path" 2>/dev/null
}
served=""
for _ in $(seq 1 30); do http_probe readinessProbe && { served=1; break; }; sleep 1; done
[ -n "$served" ] || fail "serve's readiness probe never passed"
http_probe livenessProbe || fail "serve's liveness probe failed"
say "   serve: readiness (GET $(field "$WORK/k8s-serve.json" probes readinessProbe httpGet path)) and liveness" \
  "(GET $(field "$WORK/k8s-serve.json" probes livenessProbe httpGet path)) pass"

# Redis gone: readiness fails (exit 4), liveness passes (a restart would not bring Redis back).
"$DOCKER" stop tp-k8s-redis >/dev/null
code=0; out="$(probe tp-k8s-worker "${readiness[@]}")" || code=$?
[ "$code" != 0 ] || fail "readiness passed with Redis gone: $out"
say "   readiness, Redis gone: exit $code ($out)"
code=0; out="$(probe tp-k8s-worker "${liveness[@]}")" || code=$?
[ "$code" = 0 ] || fail "liveness failed with Redis gone (exit $code): $out"
say "   liveness, Redis gone: exit 0 ($out)"
if http_probe readinessProbe; then fail "serve's readiness passed with Redis gone"; fi
http_probe livenessProbe || fail "serve's liveness failed with Redis gone"
say "   serve, Redis gone: readiness fails, liveness passes"
# The stop within the pod's terminationGracePeriodSeconds, with Redis still gone.
grace="$(field "$WORK/k8s-worker.json" grace)"
t=$SECONDS
"$DOCKER" stop -t "$grace" tp-k8s-worker >/dev/null
stop_s=$((SECONDS - t))
code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' tp-k8s-worker)"
case "$code" in 0 | 1) ;; *) fail "the worker, stopped with Redis gone: exit $code after $stop_s s (grace $grace s)" ;; esac
say "   the worker stopped with Redis gone: exit $code after $stop_s s, within the grace of $grace s"
"$DOCKER" rm -f tp-k8s-redis tp-k8s-worker tp-k8s-idle tp-k8s-serve >/dev/null
"$DOCKER" network rm "$NET" >/dev/null
took "the manifests' pods run read-only as uid 10001 with their secret files; probes as expected"

# ----- 6. compose ------------------------------------------------------------------------------------
step "compose: the demo, as docker-compose.yml says"
if ! command -v docker-compose >/dev/null 2>&1; then
  say "   docker-compose missing: apt-get install docker-compose"
  apt_install docker-compose
fi
say "   $(docker-compose version --short 2>/dev/null || docker-compose version | head -n 1)"
project="$WORK/compose"
mkdir -p "$project"
cp "$ROOT/docker-compose.yml" "$project/"
cp "$ROOT/.env.example" "$project/.env"
sed -i "s/change-me-to-a-long-random-hex/$PASSWORD/g" "$project/.env"
demo="$(sed -n 's/^#   docker compose \(--profile demo up .*\)$/\1/p' "$ROOT/docker-compose.yml")"
[ -n "$demo" ] || fail "no demo command in docker-compose.yml's header"
say "   docker-compose $demo"
# shellcheck disable=SC2086 # the command line from the file, split into its words
if ! (cd "$project" && timeout 300 docker-compose --ansi never $demo) >"$WORK/logs/compose.log" 2>&1; then
  tail -n 40 "$WORK/logs/compose.log" | sed 's/^/   | /'
  fail "the compose demo failed"
fi
grep -E '^demo-feeder[_-]1 +\| 1790' "$WORK/logs/compose.log" | tail -n 5 | cut -c1-110 | sed 's/^/   /'
running="$("$DOCKER" ps -q | wc -l)"
[ "$running" = 0 ] || fail "$running containers still running after the demo ended"
(cd "$project" && docker-compose --profile demo down -v) >/dev/null 2>&1
took "the demo ended by itself with the feeder's exit code 0, and stopped all its containers"

say ""
say "image-test: engine, base images, build, smoke test, Kubernetes pods and compose demo passed in $((SECONDS - T0)) s;" \
  "image $IMAGE $(size_mb "$IMAGE")"
# The plain closing line CI logs are read for.
say "image-test: 6 passed, 0 failed"
