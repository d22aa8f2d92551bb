"""The JSON shapes of the API (and of the CLI's ``--json``), from the store's values. Pure.

Nothing here can carry a Threads token: results and events are token-free by construction
(errors are redacted before they are stored), an account shows whether its token was rejected
but not its fingerprint, and URLs (webhooks) are shown without their query values or password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from worker.core.result import PollResult
from worker.ops.health import Beat
from worker.ops.stats import MinuteStats
from worker.store.admin import AccountView, DeadLetter, DeadLetterKind, FinalEvent, InflightPoll

MASK = "***"


def mask_url(url: str | None) -> str | None:
    """``url`` without its password and query values (a webhook URL may carry a receiver's
    secret): ``https://hooks.example/x?tenant=***``."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        netloc = f"{parts.username or ''}:{MASK}@{host}"
    names = [quote(k, safe="") for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    query = "&".join(f"{k}={MASK}" for k in names)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def result_json(result: PollResult) -> dict[str, Any]:
    """Every documented field of the result hash (README, Redis schema), typed."""
    data = result.to_dict()
    data["webhook_url"] = mask_url(result.webhook_url)
    return data


def outcome_json(container_id: str, outcome: str, status: str, reason: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {
        "container_id": container_id,
        "outcome": outcome,
        "status": status,
        "url": f"/v1/containers/{container_id}",
    }
    if reason:
        data["reason"] = reason
    return data


def event_json(event: FinalEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "container_id": event.container_id,
        "status": event.status,
        "failed": event.failed,
        "error_message": event.error_message,
        "error_explanation": event.error_explanation,
        "last_error": event.last_error,
        "reason": event.reason or None,
        "account": event.account,
        "checks": event.checks,
        "finalized_at": event.finalized_at,
        "media_id": event.media_id,
        "platform": event.platform,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def account_json(view: AccountView, now: float) -> dict[str, Any]:
    quota = None
    if view.quota is not None:
        config = view.quota.limit.config
        quota = {
            "posts_remaining": view.quota.posts_remaining,
            "quota_usage": view.quota.limit.quota_usage,
            "quota_total": config.quota_total if config else None,
            "quota_duration": config.quota_duration if config else None,
            "fetched_at": view.quota.fetched_at,
        }
    throttled = view.throttled(now)
    return {
        "account": view.account,
        "last_seen_at": view.last_seen_at,
        "throttled": throttled,
        "throttled_until": view.throttled_until if throttled else None,
        "pause_left_s": round(view.pause_left(now), 3),
        "throttled_for_s": round(view.throttled_for(now), 3),
        "throttle_level": view.throttle_level,
        "throttled_total": view.throttled_total,
        "last_throttle_code": view.last_throttle_code,
        "last_throttled_at": view.last_throttled_at,
        "token_rejected": view.token_rejected,
        "token_rejected_at": view.token_rejected_at,
        "token_rejected_reason": view.token_rejected_reason,
        "token_rejected_code": view.token_rejected_code,
        "token_expires_at": view.token_expires_at,
        "token_expires_in_s": _round(view.token_expires_in(now)),
        "token_issued_at": view.token_issued_at or view.token_seen_at,
        "token_refreshed_at": view.token_refreshed_at,
        "token_refreshes": view.token_refreshes,
        "token_refresh_failures": view.token_refresh_failures,
        "token_refresh_retry_at": view.token_refresh_retry_at,
        "token_refresh_error": view.token_refresh_error,
        "quota": quota,
    }


def worker_json(beat: Beat, now: float) -> dict[str, Any]:
    running = int(beat.jobs.get("ongoing", 0))
    slots = int(beat.jobs.get("slots", 0))
    return {
        "name": beat.name,
        "host": beat.host,
        "pid": beat.pid,
        "started_at": beat.started_at,
        "beat_at": beat.beat_at,
        "age_s": round(max(0.0, now - beat.beat_at), 3),
        "up_s": round(max(0.0, now - beat.started_at), 3),
        "accepting": beat.accepting,
        "running": running,
        "slots": slots or None,
        "saturation": round(running / slots, 4) if slots else None,
        "jobs": dict(beat.jobs),
    }


def inflight_json(poll: InflightPoll, now: float) -> dict[str, Any]:
    r = poll.result
    return {
        "container_id": poll.container_id,
        "deadline_at": poll.deadline_at,
        "past_deadline_s": round(max(0.0, now - poll.deadline_at), 3),
        "status": r.status if r else None,
        "checks": r.checks if r else None,
        "account": r.account if r else None,
        "enqueued_at": r.enqueued_at if r else None,
        "next_check_at": r.next_check_at if r else None,
        "window_delay": r.window_delay if r else None,
        "last_error": r.last_error if r else None,
        "publish_status": r.publish_status if r else None,
    }


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": letter.kind.value,
        "id": letter.id,
        "at": letter.at,
        "reason": letter.reason,
        "replayable": letter.replayable,
    }
    if letter.kind is DeadLetterKind.INTAKE:
        data["entry_id"] = letter.entry_id or None
        data["fields"] = dict(letter.fields)
    else:
        f = letter.fields
        attempts = f.get("attempts", "")
        data.update(
            container_id=f.get("container_id") or None,
            status=f.get("status") or None,
            generation=f.get("generation") or None,
            delivery_id=f.get("delivery_id") or None,
            url=mask_url(f.get("url")) or None,
            attempts=int(attempts) if attempts.isascii() and attempts.isdigit() else None,
            body=letter.body,
        )
    return data


def minute_json(m: MinuteStats) -> dict[str, Any]:
    return {
        "at": m.at,
        "checks": m.checks,
        "finals": dict(sorted(m.finals.items())),
        "final_total": m.final_total(),
        "inflight": m.inflight,
    }


def page_json(items: list[dict[str, Any]], next_cursor: str | None, **more: Any) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor, **more}
