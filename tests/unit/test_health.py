"""Heartbeats judged (pure): which beats make a host healthy, and a beat's JSON form. The
heartbeats in Redis and ``threads-poller health``: tests/integration/test_health.py.
"""

from __future__ import annotations

import json

from worker.ops.health import Beat, evaluate


def beat(name: str, host: str, *, at: float = 100.0, accepting: bool = True) -> Beat:
    return Beat(name, host, 1, started_at=at - 50, beat_at=at, ttl_s=15, accepting=accepting)


def test_evaluate_matches_this_host_only() -> None:
    beats = [beat("a-1", "host-a"), beat("b-1", "host-b")]
    ok = evaluate(101.0, beats, host="host-b")
    assert ok.healthy and "b-1" in ok.message and "last beat 1.0s ago" in ok.message
    other = evaluate(101.0, beats, host="host-c")
    assert not other.healthy
    assert other.message == (
        "unhealthy: no worker heartbeat from host host-c; 2 live worker(s) elsewhere"
    )
    assert evaluate(101.0, beats, host=None).healthy  # --any
    assert not evaluate(101.0, [], host=None).healthy


def test_evaluate_draining_worker_is_unhealthy() -> None:
    draining = [beat("a-1", "host-a", accepting=False)]
    health = evaluate(101.0, draining, host="host-a")
    assert not health.healthy and "shutting down" in health.message
    # A second process on the same host that still takes jobs keeps the host healthy.
    assert evaluate(101.0, [*draining, beat("a-2", "host-a")], host="host-a").healthy


def test_beat_json_round_trip_and_garbage() -> None:
    b = Beat("w", "h", 7, 1.5, 2.5, 15.0, False, {"complete": 3})
    assert Beat.from_json(b.to_json()) == b
    for raw in [b"", b"{}", b"[]", b"not json", json.dumps({"name": "w"}).encode()]:
        assert Beat.from_json(raw) is None
