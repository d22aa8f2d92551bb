"""The Redis side: result hashes, the events stream, and atomic enqueue of a container's poll.

All writes that must not be torn go through the Lua scripts in ``worker/lua``: enqueue records the
container and creates its arq job in one step (no window where one exists without the other), and
record writes a check's outcome and, for a final state, its event, once, whatever re-runs follow.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

from arq.jobs import serialize_job
from redis.asyncio import Redis

from api_client.models import explain_error_message
from worker.decisions import Decision
from worker.keys import ARQ_IN_PROGRESS_PREFIX, ARQ_JOB_PREFIX, ARQ_RETRY_PREFIX, Keys

CHECK_FUNCTION = "check_container"
DELIVER_FUNCTION = "deliver_webhook"
# arq drops a job whose key expired before it ran; a poll lasts minutes, so a day is generous
# and a periodic sweep (reconcile) settles anything that still slips through.
JOB_EXPIRY_MS = 86_400_000

EnqueueStatus = Literal["enqueued", "restarted", "duplicate", "final"]


def _script(name: str) -> str:
    return resources.files("worker").joinpath("lua", name).read_text(encoding="utf-8")


def stamp(t: float) -> str:
    """A time as stored: Unix seconds to the millisecond (``1795438388.610``), rounded down."""
    return ms_stamp(int(t * 1000))


def ms_stamp(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _num(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PollResult:
    """One container's state as stored in its result hash.

    A field missing from the hash means empty / 0 / false: enqueue writes only ``container_id``,
    ``status``, ``final``, ``enqueued_at``, ``deadline_at``, ``generation`` (and ``account``,
    ``publish``, ``webhook_url`` when given), and a write stores an empty value by deleting the
    field. Until the first check is recorded (no ``updated_at`` yet) the next check is due at
    ``enqueued_at``.
    """

    container_id: str
    status: str
    final: bool
    error_message: str | None
    error_explanation: str | None
    last_api_status: str | None
    checks: int
    enqueued_at: float | None
    deadline_at: float | None
    last_checked_at: float | None
    next_check_at: float | None
    finalized_at: float | None
    last_error: str | None
    last_error_kind: str | None
    last_error_code: int | None
    last_error_subcode: int | None
    last_error_fbtrace_id: str | None
    throttled: int
    throttle_delay: float
    last_throttled_at: float | None
    publish: bool
    publish_status: str | None
    publish_attempts: int
    media_id: str | None
    published_at: float | None
    finished_at: float | None
    quota_usage: int | None
    quota_total: int | None
    webhook_url: str | None
    webhook_status: str | None
    webhook_attempts: int
    account: str | None
    generation: str

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> PollResult:
        h = {
            (k.decode() if isinstance(k, bytes) else k): (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            )
            for k, v in raw.items()
        }

        def opt(name: str) -> str | None:
            return h.get(name) or None

        def opt_int(name: str) -> int | None:
            value = _num(h.get(name))
            return None if value is None else int(value)

        enqueued_at = _num(h.get("enqueued_at"))
        # No write since enqueue: the first check is due at once (enqueue does not store it).
        next_check_at = _num(h.get("next_check_at")) if "updated_at" in h else enqueued_at
        return cls(
            container_id=h.get("container_id", ""),
            status=h.get("status", ""),
            final=h.get("final") == "1",
            error_message=opt("error_message"),
            error_explanation=opt("error_explanation"),
            last_api_status=opt("last_api_status"),
            checks=opt_int("checks") or 0,
            enqueued_at=enqueued_at,
            deadline_at=_num(h.get("deadline_at")),
            last_checked_at=_num(h.get("last_checked_at")),
            next_check_at=next_check_at,
            finalized_at=_num(h.get("finalized_at")),
            last_error=opt("last_error"),
            last_error_kind=opt("last_error_kind"),
            last_error_code=opt_int("last_error_code"),
            last_error_subcode=opt_int("last_error_subcode"),
            last_error_fbtrace_id=opt("last_error_fbtrace_id"),
            throttled=opt_int("throttled") or 0,
            throttle_delay=_num(h.get("throttle_delay")) or 0.0,
            last_throttled_at=_num(h.get("last_throttled_at")),
            publish=h.get("publish") == "1",
            publish_status=opt("publish_status"),
            publish_attempts=opt_int("publish_attempts") or 0,
            media_id=opt("media_id"),
            published_at=_num(h.get("published_at")),
            finished_at=_num(h.get("finished_at")),
            quota_usage=opt_int("quota_usage"),
            quota_total=opt_int("quota_total"),
            webhook_url=opt("webhook_url"),
            webhook_status=opt("webhook_status"),
            webhook_attempts=opt_int("webhook_attempts") or 0,
            account=opt("account"),
            generation=h.get("generation", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("generation")
        return data


@dataclass(frozen=True, slots=True)
class SettleJob:
    """arq's end-of-run bookkeeping for the job of a check: ``next_run_ms`` re-schedules it
    (arq's Retry), None deletes it (the poll is over)."""

    job_id: str
    next_run_ms: int | None


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    container_id: str
    account: str | None = None
    force: bool = False
    publish: bool = False
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    container_id: str
    outcome: EnqueueStatus
    status: str


class ResultStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        window_seconds: float,
        result_ttl_seconds: int,
        events_max_len: int,
        default_webhook_url: str | None = None,
    ) -> None:
        self.redis = redis
        self.default_webhook_url = default_webhook_url
        self.keys = keys
        self.window_seconds = window_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self.events_max_len = events_max_len
        self._enqueue = redis.register_script(_script("enqueue.lua"))
        self._record = redis.register_script(_script("record.lua"))
        self._claim = redis.register_script(_script("publish_claim.lua"))

    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[Enqueued]:
        """Start polling each container unless it is already being polled (one round trip)."""
        if not requests:
            return []
        now_ms = int(time.time() * 1000)
        enqueued_at = ms_stamp(now_ms)
        deadline_at = ms_stamp(now_ms + round(self.window_seconds * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            for req in requests:
                generation = uuid.uuid4().hex[:12]
                payload = serialize_job(
                    CHECK_FUNCTION, (req.container_id, generation), {}, None, now_ms
                )
                await self._enqueue(
                    keys=[
                        self.keys.result(req.container_id),
                        self.keys.inflight,
                        self.keys.queue,
                        self.keys.accounts,
                    ],
                    args=[
                        req.container_id,
                        enqueued_at,
                        deadline_at,
                        self.result_ttl_seconds,
                        generation,
                        ARQ_JOB_PREFIX,
                        self.keys.job_id_base(req.container_id),
                        payload,
                        JOB_EXPIRY_MS,
                        now_ms,
                        req.account or "",
                        "1" if req.force else "0",
                        ARQ_IN_PROGRESS_PREFIX,
                        "1" if req.publish else "0",
                        req.webhook_url or "",
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        results = []
        for req, reply in zip(requests, replies, strict=True):
            outcome, status = (v.decode() if isinstance(v, bytes) else str(v) for v in reply)
            results.append(Enqueued(req.container_id, outcome, status))  # type: ignore[arg-type]
        return results

    async def load(self, container_id: str) -> PollResult | None:
        raw = await self.redis.hgetall(self.keys.result(container_id))  # type: ignore[misc]
        return PollResult.from_hash(raw) if raw else None

    async def load_many(self, container_ids: Sequence[str]) -> list[PollResult | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in container_ids:
                pipe.hgetall(self.keys.result(cid))
            raws = await pipe.execute()
        return [PollResult.from_hash(raw) if raw else None for raw in raws]

    async def record(
        self,
        current: PollResult,
        decision: Decision,
        *,
        checks: int,
        checked_at: float | None,
        now: float,
        extra: Mapping[str, str] | None = None,
        settle_job: SettleJob | None = None,
    ) -> tuple[str, str]:
        """Write one check's outcome. Returns (outcome, event id); outcome "ok" if written.

        With ``settle_job`` the same script also does what arq's ``finish_job`` would do after
        the run (delete the job, or re-schedule it), but only if the outcome was written.
        """
        fields: dict[str, str] = {
            "status": decision.status,
            "final": "1" if decision.final else "0",
            "checks": str(checks),
            "error_message": decision.error_message or "",
            "error_explanation": explain_error_message(decision.error_message),
            "next_check_at": stamp(decision.next_check_at) if decision.next_check_at else "",
            "updated_at": stamp(now),
        }
        if decision.last_api_status is not None:
            fields["last_api_status"] = decision.last_api_status
        if checked_at is not None:
            fields["last_checked_at"] = stamp(checked_at)
        if decision.final:
            fields["finalized_at"] = stamp(now)
        if not decision.spent:
            fields["throttled"] = str(current.throttled + 1)
            fields["throttle_delay"] = repr(current.throttle_delay + decision.delay_added)
            fields["last_throttled_at"] = stamp(now)
        if decision.error is not None:
            err = decision.error.to_fields()
            fields.update(
                last_error=f"{decision.error}; {decision.hint}"
                if decision.hint
                else str(decision.error),
                last_error_kind=decision.error_kind or "",
                last_error_code=err.get("code", ""),
                last_error_subcode=err.get("subcode", ""),
                last_error_fbtrace_id=err.get("fbtrace_id", ""),
            )
        if extra:
            fields.update(extra)
        event: dict[str, str] = {
            "container_id": current.container_id,
            "status": decision.status,
            "error_message": decision.error_message or "",
            "account": current.account or "",
            "checks": str(checks),
            "finalized_at": stamp(now),
        }
        if decision.error is not None:
            event["last_error"] = fields["last_error"]
        if fields.get("media_id"):
            event["media_id"] = fields["media_id"]
        # A final state with a webhook creates its delivery job in the same atomic step.
        hook_id, hook_payload = "", b""
        if decision.final and (current.webhook_url or self.default_webhook_url):
            hook_id = self.keys.webhook_job_id(current.container_id, current.generation)
            hook_payload = serialize_job(
                DELIVER_FUNCTION, (current.container_id, current.generation), {}, None,
                int(now * 1000),
            )  # fmt: skip
        args: list[str | int | bytes] = [
            current.generation,
            "1" if decision.final else "0",
            self.result_ttl_seconds,
            self.events_max_len,
            current.container_id,
            len(fields),
            ARQ_JOB_PREFIX + hook_id if hook_id else "",
            hook_id,
            hook_payload,
            JOB_EXPIRY_MS,
            int(now * 1000),
        ]
        keys = [
            self.keys.result(current.container_id),
            self.keys.inflight,
            self.keys.events,
            self.keys.queue,
        ]
        if settle_job is None:
            args += ["", "", 0]
        else:
            job_id = settle_job.job_id
            keys += [
                ARQ_IN_PROGRESS_PREFIX + job_id,
                ARQ_RETRY_PREFIX + job_id,
                ARQ_JOB_PREFIX + job_id,
            ]
            args += [
                "retry" if settle_job.next_run_ms is not None else "done",
                job_id,
                settle_job.next_run_ms or 0,
            ]
        for k, v in fields.items():
            args += [k, v]
        for k, v in event.items():
            args += [k, v]
        reply = await self._record(keys=keys, args=args)
        outcome, event_id = (v.decode() if isinstance(v, bytes) else str(v) for v in reply)
        return outcome, event_id

    async def claim_publish(self, current: PollResult, *, max_attempts: int) -> str:
        reply = await self._claim(
            keys=[self.keys.result(current.container_id)],
            args=[current.generation, stamp(time.time()), max_attempts],
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def inflight_past(self, cutoff: float, limit: int = 500) -> list[str]:
        """Containers whose window ended before ``cutoff`` but that are still listed in flight."""
        ids = await self.redis.zrangebyscore(self.keys.inflight, "-inf", cutoff, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def job_exists(self, result: PollResult) -> bool:
        job_id = self.keys.job_id(result.container_id, result.generation)
        return bool(
            await self.redis.exists(ARQ_JOB_PREFIX + job_id, ARQ_IN_PROGRESS_PREFIX + job_id)
        )

    async def forget_inflight(self, container_id: str) -> None:
        await self.redis.zrem(self.keys.inflight, container_id)

    async def inflight_count(self) -> int:
        return int(await self.redis.zcard(self.keys.inflight))
