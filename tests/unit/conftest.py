"""The rule of tests/unit: pure tests only. No fixture that starts Redis or the simulator, no
network connection, no listening socket; helpers such as ``tests.helpers.settings.make_settings``
are fine.

Two checks enforce it, each failing the offending test with a pointer to tests/integration/:
the fixtures a test requests (directly or through other fixtures), before any of them is set up,
and every TCP/UDP ``connect`` or ``bind`` while it runs (Unix sockets, e.g. the event loop's own,
stay allowed).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

# The shared fixtures of tests/conftest.py that start something or need something started.
NOT_IN_UNIT = frozenset({"redis_server", "redis", "sim", "settings", "keys", "project_env"})
MOVE = "it belongs in tests/integration/ (tests/unit/ is pure: no Redis, no simulator, no network)"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    requested = NOT_IN_UNIT.intersection(getattr(item, "fixturenames", ()))
    if requested:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(requested))}: {MOVE}", pytrace=False)


class NetworkInUnitTestError(AssertionError):
    pass


def _refuse_inet(real: Callable[..., Any], what: str) -> Callable[..., Any]:
    def guarded(self: socket.socket, *args: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkInUnitTestError(f"a unit test called socket.{what}{args!r}: {MOVE}")
        return real(self, *args)

    return guarded


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for what in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, what, _refuse_inet(getattr(socket.socket, what), what))
