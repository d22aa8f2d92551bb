"""The public surface of ``worker``, pinned (in the manner of httpx's test_exported_members).

A name added to or dropped from ``worker.__all__`` is an API change: this test makes it a
deliberate one. Pure: no Redis, no fixtures.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import worker
from config import Settings
from worker import (
    EnqueueOutcome,
    PollerClient,
    enqueue,
    enqueue_many,
    get_history,
    get_result,
    wait_for,
)

PUBLIC = [
    "FINAL_STATES",
    "EnqueueOutcome",
    "HistoryEvent",
    "InvalidIdError",
    "PollResult",
    "PollerClient",
    "PollerError",
    "ScopeError",
    "State",
    "WebhookPolicy",
    "enqueue",
    "enqueue_many",
    "get_history",
    "get_result",
    "is_final",
    "is_success",
    "wait_for",
]


def test_all_is_the_public_surface() -> None:
    assert worker.__all__ == PUBLIC


def test_every_exported_name_is_importable_and_documented() -> None:
    namespace: dict[str, object] = {}
    exec("from worker import *", namespace)  # noqa: S102 - a literal, the point of the test
    doc = worker.__doc__ or ""
    for name in worker.__all__:
        assert getattr(worker, name) is namespace[name]
        assert name in doc, f"worker's docstring does not list {name}"


def test_errors_share_the_root() -> None:
    assert issubclass(worker.InvalidIdError, worker.PollerError)
    assert issubclass(worker.InvalidIdError, ValueError)
    # A producer catching the root catches a refusal of its scope too (and it is no OSError,
    # which the doors read as "Redis cannot be reached").
    assert issubclass(worker.ScopeError, worker.PollerError)
    assert not issubclass(worker.ScopeError, OSError)


RUNTIME = ("worker.runtime", "worker.jobs", "worker.ops", "worker.cli", "worker.demo")


def test_import_worker_does_not_load_the_runtime() -> None:
    # Nor an HTTP stack. arq.worker does load: arq's package __init__ imports it, so arq's
    # connection settings (worker.store.connections) bring it along; our modules outside
    # runtime/ never import it themselves (the import-linter contract).
    # A fresh interpreter: this one has imported the world already.
    code = f"""
import sys, worker
runtime = {RUNTIME!r} + ("simulator", "prometheus_client", "uvloop", "aiohttp", "api_client.client")
loaded = [m for m in sys.modules if any(m == r or m.startswith(r + ".") for r in runtime)]
assert not loaded, loaded
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_client_defaults_are_the_deployment_defaults() -> None:
    """A PollerClient built without settings fixes what a worker that sets nothing expects."""
    params = inspect.signature(PollerClient.__init__).parameters
    fields = Settings.model_fields
    for param, setting in [
        ("key_prefix", "key_prefix"),
        ("window_seconds", "poll_max_seconds"),
        ("result_ttl_seconds", "result_ttl_seconds"),
        ("events_max_len", "events_max_len"),
        ("account_requests_per_second", "account_max_requests_per_second"),
    ]:
        assert params[param].default == fields[setting].default, param
        assert params[param].kind is inspect.Parameter.KEYWORD_ONLY


def test_module_functions_require_settings() -> None:
    """Library code never reads the environment: the wrappers take settings, always."""
    for fn in (enqueue, enqueue_many, get_result, get_history, wait_for):
        settings = inspect.signature(fn).parameters["settings"]
        assert settings.kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__
        assert settings.default is inspect.Parameter.empty, fn.__name__


def test_the_window_is_a_parameter_of_every_enqueue() -> None:
    for method in (PollerClient.enqueue, PollerClient.enqueue_many):
        window = inspect.signature(method).parameters["window_seconds"]
        assert window.default is None  # None: the client's window
    assert EnqueueOutcome("1", "enqueued", "QUEUED").outcome == "enqueued"
