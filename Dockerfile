# syntax=docker/dockerfile:1
#
# threads-poller worker image.
#
#   docker build -t threads-poller .
#   docker run --env-file .env threads-poller                 # = threads-poller worker
#   docker run --env-file .env threads-poller status 17889615691921648
#
# Stop grace: on SIGTERM the worker stops taking checks and lets running ones finish for
# int(HTTP_TIMEOUT_SECONDS) + 2 seconds (arq's job_completion_wait, worker/runtime/app.py), then exits 0.
# The orchestrator's grace period (docker stop -t / compose stop_grace_period / Kubernetes
# terminationGracePeriodSeconds) must exceed HTTP_TIMEOUT_SECONDS + 2 (12 s with the defaults),
# plus a few seconds to close connections; Docker's default of 10 s is too short. A check cut off
# by SIGKILL is not lost (arq runs it again), it only costs one extra API call.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
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

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 poller \
    && useradd --system --uid 10001 --gid poller --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin poller
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Settings come from the environment; an optional .env is read from here.
WORKDIR /app
USER 10001:10001
# Prometheus /metrics (METRICS_PORT; 0 turns it off).
EXPOSE 9100
STOPSIGNAL SIGTERM
# Passes only while a worker process in this container writes its heartbeat to Redis
# (worker/ops/health.py): exit 1 names the reason, 4 means Redis is unreachable.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["threads-poller", "health"]
ENTRYPOINT ["threads-poller"]
CMD ["worker"]
