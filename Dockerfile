# threads-poller images: the worker (the default target) and the API simulator.
#
#   docker build -t threads-poller .
#   docker build --target simulator -t threads-poller-simulator .
#   docker run --env-file .env --stop-timeout 30 threads-poller      # = threads-poller worker
#   docker run --env-file .env threads-poller status 17889615691921648
#
# No "# syntax=" line and no RUN --mount: the file builds with the builtin frontend of any
# Docker (BuildKit or the legacy builder) and with podman/buildah, none of which then has to
# pull a frontend image. With podman, build with `--format docker`: the OCI format has no
# HEALTHCHECK and podman drops it (with a warning).
#
# Behind a TLS-intercepting proxy or a private index, two build args reach pip (builder stage
# only: the runtime image carries neither, nor any other trace of them):
#   --build-arg EXTRA_CA_CERTS="$(cat corp-root-ca.pem)"     PEM text, added to Debian's bundle
#   --build-arg PIP_INDEX_URL=https://pypi.corp.example/simple
# scripts/image-test.sh passes the host's CAs that the base image lacks this way. Build args
# are stored with the builder stage on the build host: a CA is public, but put no password in
# PIP_INDEX_URL on a shared builder.
#
# Stop grace: on SIGTERM the worker stops taking checks and lets running ones finish for
# int(HTTP_TIMEOUT_SECONDS) + 2 seconds (worker/runtime/app.py), then exits 0.
# The orchestrator's grace period (docker run/stop --stop-timeout/-t, compose stop_grace_period,
# Kubernetes terminationGracePeriodSeconds) must exceed HTTP_TIMEOUT_SECONDS + 2 (12 s with the
# defaults), plus a few seconds to close connections; Docker's default of 10 s is too short. A
# check cut off by SIGKILL is not lost (it runs again), it only costs one extra API call.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Unset unless given: pip then uses its default index.
ARG PIP_INDEX_URL
ARG EXTRA_CA_CERTS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/tmp/pip-ca.pem
# pip verifies against Debian's bundle plus the given CAs (its own certifi copy cannot be
# extended); the bundle stays in this stage. printenv, not "$EXTRA_CA_CERTS": BuildKit prints
# a RUN line with its build args expanded, and the log needs no certificates in it.
RUN cat /etc/ssl/certs/ca-certificates.crt > /tmp/pip-ca.pem \
    && printenv EXTRA_CA_CERTS >> /tmp/pip-ca.pem \
    && python -m venv /opt/venv
WORKDIR /src
# The lock alone first: this layer is rebuilt only when the dependencies change. Every
# dependency has a manylinux wheel, so no compiler is needed.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY config ./config
COPY api_client ./api_client
COPY worker ./worker
COPY simulator ./simulator
# Non-editable and without dependency resolution: the lock above is the whole dependency set.
# pip and setuptools then leave the venv: the running service has no use for an installer.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip uninstall --yes setuptools pip

# What both images share: the venv, a non-root user, the command.
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
# Not --system: useradd warns that 10001 is above the system range. --no-log-init: no lastlog
# entry, a sparse file as large as the uid.
RUN groupadd --gid 10001 poller \
    && useradd --no-log-init --uid 10001 --gid poller --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin poller
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Settings come from the environment; an optional .env is read from here.
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["threads-poller"]

# The Threads API simulator (the compose demo): its own health check, since the worker's
# (a heartbeat in Redis) can never pass here. The check probes the port of this CMD.
FROM runtime AS simulator
EXPOSE 8787
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8787/_sim/faults', timeout=3)"]
CMD ["simulate", "--host", "0.0.0.0", "--port", "8787"]

# The worker: the last stage, so the default target.
FROM runtime AS worker
# Prometheus /metrics: the worker's on METRICS_PORT (0 turns it off), serve's on the next port
# (SERVE_METRICS_PORT). The service's own default is loopback; in a container the scraper comes
# from outside, over the container's own network: all addresses, set here explicitly.
ENV METRICS_HOST=0.0.0.0
EXPOSE 9100 9101
STOPSIGNAL SIGTERM
# Passes only while a worker process in this container writes its heartbeat to Redis
# (worker/ops/health.py): exit 1 names the reason, 4 means Redis is unreachable.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["threads-poller", "health"]
CMD ["worker"]
