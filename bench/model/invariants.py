"""The lifecycle model's promises: ``check_invariants`` reads all of Redis and the models after
every step; ``check_final``, after the drain, that every poll got to a final state and every
webhook was delivered or dead-lettered with its own URL and body.
"""

from __future__ import annotations

import json
from typing import Any

from bench.faults.invariants import event_problem, final_events
from bench.model.world import INTERVAL, MAX_DELAY, Stats, World, final_hashes
from worker.core.decisions import Schedule
from worker.core.history import MAX_BYTES as HISTORY_MAX_BYTES
from worker.core.history import checks_of_last_poll, parse_history


async def check_invariants(world: World) -> None:
    """The promises, checked against all of Redis and the models (after every step)."""
    g = world.graph
    assert not g.violations, g.violations
    hashes = await final_hashes(world)
    events = await final_events(world.redis, world.keys.events)
    for key, count in events.items():
        assert count == 1, f"{key}: {count} final events for one generation"
    for h in hashes:
        cid, gen, status = h["container_id"], h["generation"], h.get("status", "")
        if h.get("final") != "1":
            assert events[(cid, gen)] == 0, f"{cid}/{gen}: a final event for a live poll"
            continue
        # One final event per poll: the fault harnesses' judgement, here per generation.
        problem = event_problem(events[(cid, gen)], final=True)
        assert problem is None, f"{cid}/{gen}: final {status} without its event"
        seen = world.finals_seen.setdefault((cid, gen), status)
        assert seen == status, f"{cid}/{gen}: final state changed from {seen} to {status}"
        if status == "PUBLISH_UNCONFIRMED":
            # This poll made a call that could have posted, or took over an earlier one's.
            carried = "earlier poll" in h.get("publish_note", "")
            assert (cid, gen) in g.maybe_posted_polls or carried, (
                f"{cid}/{gen}: PUBLISH_UNCONFIRMED, never published"
            )
        if status == "PUBLISH_FAILED":
            assert g.certain_failures[cid] or "replicas" in h.get("last_error", ""), (
                f"{cid}: PUBLISH_FAILED without an answer that proved it ({h.get('last_error')})"
            )
        if h.get("publish") == "1" and cid in g.maybe_posted and not h.get("children"):
            assert status in ("PUBLISHED", "PUBLISH_UNCONFIRMED", "CANCELLED"), (
                f"{cid}: its publish could have posted, yet it ended {status}"
            )
        # (A later poll of the id without publish sees PUBLISHED with no media id: not this.)
        if status == "PUBLISHED" and cid in g.answered_media and h.get("publish") == "1":
            assert h.get("media_id") == g.answered_media[cid], (
                f"{cid}: published with media id {g.answered_media[cid]}, recorded "
                f"{h.get('media_id')!r}: "
                + _show(h, "generation", "publish_status", "publish_note", "last_run", "runs")
            )
        if status == "TIMED_OUT" and "within the window" in h.get("last_error", ""):
            _ended_in_its_window(h)
        # The history is written by the very script calls that count the checks (issue 23):
        # its check entries since this poll's enqueue are the hash's checks (unless the cap
        # dropped the enqueue's entry).
        raw = await world.redis.get(world.keys.history(cid))
        story = parse_history(raw)
        if raw is not None and len(raw) < HISTORY_MAX_BYTES - 200:
            assert checks_of_last_poll(story) == int(h.get("checks") or 0), (
                f"{cid}/{gen}: {checks_of_last_poll(story)} check entries in its history, "
                f"checks={h.get('checks')}: {[str(e.kind) for e in story]}"
            )


def _ended_in_its_window(h: dict[str, str]) -> None:
    """A poll that timed out used its window: every check it had, or no next check fitted
    before its deadline (pushed out by throttling, up to the cap) and the slack."""
    start = float(h.get("children_ready_at") or h["enqueued_at"])
    deadline = float(h["deadline_at"])
    schedule = Schedule(INTERVAL, round(deadline - start, 1))
    end = deadline + min(float(h.get("window_delay") or 0), MAX_DELAY)
    checks = int(h.get("checks") or 0)
    finalized = float(h["finalized_at"])
    no_room = finalized + INTERVAL > end + schedule.slack - 0.01
    assert checks >= schedule.max_checks or no_room, (
        f"{h['container_id']}: TIMED_OUT after {checks} of {schedule.max_checks} checks, "
        f"{end - finalized:.2f}s before its deadline: "
        + _show(
            h,
            "last_error",
            "runs",
            "enqueued_at",
            "deadline_at",
            "finalized_at",
            "window_delay",
            "last_checked_at",
            "carousel_parent",
            "intake_entry",
        )
    )


async def check_final(world: World, stats: Stats) -> None:
    """After the drain: every poll final; every webhook delivered or dead-lettered with its own
    URL and body; carousels that timed out had a child that never FINISHED."""
    hashes = {h["container_id"]: h for h in await final_hashes(world)}
    for h in hashes.values():
        assert h.get("final") == "1", f"{h['container_id']}: not final"
        stats.finals[h["status"]] += 1
        if (
            h["status"] == "TIMED_OUT"
            and h.get("children")
            and "children not all FINISHED" in h.get("last_error", "")
        ):
            kids = [hashes.get(k) or {} for k in h["children"].split(",")]
            assert any(
                k.get("status") != "FINISHED"
                or float(k.get("finalized_at", "inf")) > float(h["finalized_at"])
                for k in kids
            ), (
                f"carousel {h['container_id']} timed out although all its children FINISHED: "
                + _show(h, "generation", "children_pending", "enqueued_at", "deadline_at")
                + "; "
                + "; ".join(
                    _show(
                        k,
                        "container_id",
                        "status",
                        "finalized_at",
                        "carousel_parent",
                        "parent_generation",
                        "generation",
                        "enqueued_at",
                    )
                    for k in kids
                )
            )
    dead: dict[tuple[str, str], dict[bytes, bytes]] = {}
    for _, raw in await world.redis.xrange(world.keys.webhook_dead_letters):
        dead[(raw[b"container_id"].decode(), raw[b"generation"].decode())] = raw
    delivered: dict[int, list[dict[str, Any]]] = {}
    for n, sent in world.receiver.got:
        delivered.setdefault(n, []).append(json.loads(sent))
    ended = {
        (ev[b"container_id"].decode(), ev.get(b"generation", b"").decode())
        for _, ev in await world.redis.xrange(world.keys.events)
    }
    for (cid, gen), n in world.hooks.items():
        url = world.receiver.url(n)
        if (cid, gen) not in ended:
            # That poll never ended (a later one replaced it): no delivery is owed.
            continue
        got = [b for b in delivered.get(n, []) if b["delivery_id"].endswith(f":{gen}")]
        letter = dead.get((cid, gen))
        assert got or letter is not None, f"{cid}/{gen}: webhook neither delivered nor dead"
        if letter is not None and not got:
            assert letter.get(b"target", b"").decode() == url, (
                f"{cid}/{gen}: dead-lettered for {letter.get(b'target')!r}, not its own {url} "
                f"({letter[b'reason'].decode()})"
            )
    for n, bodies in delivered.items():
        owners = {gen for (cid, gen), m in world.hooks.items() if m == n}
        for one in bodies:
            gen = one["delivery_id"].rsplit(":", 1)[1]
            assert gen in owners, f"a delivery of {one['container_id']}/{gen} reached hook {n}"


def _show(h: dict[str, str], *names: str) -> str:
    return " ".join(f"{n}={h.get(n)}" for n in names)
