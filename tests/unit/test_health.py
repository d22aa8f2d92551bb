"""Heartbeats judged (pure): which beats make a host healthy, and a beat's JSON form. The
heartbeats in Redis and ``threads-poller health``: tests/integration/test_health.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.ops.health import Beat, evaluate, process_identity


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


def test_evaluate_liveness_counts_a_draining_worker() -> None:
    """``health --liveness``: a worker draining after SIGTERM is alive (killing it would cut the
    drain short); a host with no beat, or another container's beat, is still not."""
    draining = [beat("a-1", "host-a", accepting=False)]
    live = evaluate(101.0, draining, host="host-a", draining_ok=True)
    assert live.healthy and live.message == "alive: worker a-1 is shutting down (draining)"
    assert not evaluate(101.0, draining, host="host-b", draining_ok=True).healthy
    assert not evaluate(101.0, [], host=None, draining_ok=True).healthy
    elsewhere = evaluate(101.0, draining, host="host-a", local=lambda b: False, draining_ok=True)
    assert not elsewhere.healthy and "no worker process in this container" in elsewhere.message
    # Taking jobs: the same answer as without the flag.
    assert evaluate(101.0, [beat("a-2", "host-a")], host="host-a", draining_ok=True).message == (
        evaluate(101.0, [beat("a-2", "host-a")], host="host-a").message
    )


def test_beat_json_round_trip_and_garbage() -> None:
    b = Beat("w", "h", 7, 1.5, 2.5, 15.0, False, {"complete": 3}, proc="boot:9")
    assert Beat.from_json(b.to_json()) == b
    for raw in [b"", b"{}", b"[]", b"not json", json.dumps({"name": "w"}).encode()]:
        assert Beat.from_json(raw) is None


def test_local_probe_counts_only_beats_of_processes_here() -> None:
    """Host networking: a beat with this host's name but another container's process is not ours."""
    ours = Beat("a-1", "host-a", 1, 50.0, 100.0, 15.0, proc="boot:111")
    next_door = Beat("a-2", "host-a", 7, 50.0, 100.0, 15.0, proc="boot:222")
    here = {"a-1"}
    health = evaluate(101.0, [ours, next_door], host="host-a", local=lambda b: b.name in here)
    assert health.healthy and health.beats == (ours,)
    here.clear()
    alone = evaluate(101.0, [next_door], host="host-a", local=lambda b: b.name in here)
    assert not alone.healthy
    assert "no worker process in this container" in alone.message
    # No /proc to ask: the host name decides, and the message says so.
    blind = evaluate(101.0, [next_door], host="host-a", local=lambda b: None)
    assert blind.healthy and "host name match only" in blind.message


def test_process_identity_reads_proc_stat(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("b00t\n")
    (tmp_path / "42").mkdir()
    # A command name with a space and a ")" in it must not shift the fields.
    fields = " ".join(str(i) for i in range(3, 53))  # fields 3..52; starttime is field 22
    (tmp_path / "42" / "stat").write_text(f"42 (my )worker) {fields}\n")
    assert process_identity(42, tmp_path) == "b00t:22"
    assert process_identity(43, tmp_path) is None
    assert process_identity(42, tmp_path / "nowhere") is None
