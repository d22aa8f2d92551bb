"""The Redis side of a poll: result hashes, the events stream, enqueue and record.

All writes that must not be torn go through the Lua scripts in ``worker/store/lua``: enqueue
records the container and creates its job in one step, on Redis' clock (no window where one
exists without the other); record writes a check's outcome and either schedules the job's next
run or, on a final state, ends the job and emits the one event, and only while the run still
owns the poll (see ``worker.store.queue``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from api_client.models import explain_error_message
from config import Settings
from config.producers import UNRESTRICTED, Scope
from worker.core.decisions import Decision
from worker.core.history import SEPARATOR, HistoryEvent, webhook_entry
from worker.core.result import Changes, PollResult, stamp
from worker.core.tracing import optional_traceparent
from worker.core.webhooks import WebhookOutcome
from worker.store import scripts
from worker.store.history import read_history
from worker.store.jobdata import check_job, delivery_job
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob, text
from worker.store.script_args import EnqueueArgs, RecordArgs, WebhookSettleArgs, flag

WEBHOOK_DEAD_LETTERS_MAX_LEN = 100_000
EnqueueStatus = Literal["enqueued", "restarted", "duplicate", "final", "refused"]
RecordOutcome = Literal["ok", "stale"]


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    container_id: str
    account: str | None = None
    force: bool = False
    publish: bool = False
    webhook_url: str | None = None
    # The intake entry this request came from: a replay of the same entry is a duplicate.
    intake_entry: str | None = None
    # A reply: the media id it answers.
    reply_to: str | None = None
    # A carousel: ``container_id`` is its parent, these its children (each polled on its own).
    children: tuple[str, ...] = ()
    # Who asks, and so what may be asked (config/producers.py): enqueue.lua enforces it and
    # stores the name, to which the poll then belongs.
    producer: Scope = UNRESTRICTED
    # The poll's trace (W3C ``traceparent``): a producer's, or its enqueue span's. Checked here
    # (and by enqueue.lua) whatever door it came through; the doors check it first to say so.
    traceparent: str | None = None
    # Whose container (api_client.platforms); ``account`` is already its key on that platform.
    platform: str = "threads"

    def __post_init__(self) -> None:
        optional_traceparent(self.traceparent)


@dataclass(frozen=True, slots=True)
class Enqueued:
    container_id: str
    outcome: EnqueueStatus
    status: str
    # Why it was refused (a carousel's rules: worker/store/lua/enqueue.lua); "" otherwise.
    reason: str = ""
    # Refused by the producer's scope (an account, a flag, another producer's poll).
    forbidden: bool = False


@dataclass(frozen=True, slots=True)
class Recorded:
    outcome: RecordOutcome
    # "lease lost" / "already final" / "replaced" when stale.
    reason: str = ""
    event_id: str = ""
    # When the job runs next (Redis time, s); None when the poll ended or the record was stale.
    next_run_at: float | None = None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One delivery attempt's outcome: ``delivered``, ``retry`` (after ``delay_s``) or ``dead``."""

    generation: str
    outcome: WebhookOutcome
    attempt: int
    reason: str
    url: str  # redacted
    body: bytes
    delay_s: float = 0.0
    # The exact URL (kept in a dead letter so that a replay goes to the same receiver).
    target: str = ""


@dataclass(frozen=True, slots=True)
class PublishClaim:
    """A publish claim's answer (``ok`` / ``stale`` / ``exhausted`` / ``off`` / a status) and,
    when it waited for replicas, how many acknowledged it of how many were needed."""

    outcome: str
    acked: int = 0
    needed: int = 0

    @property
    def safe(self) -> bool:
        """Claimed, and held by enough replicas that no failover can bring back a Redis
        without the claim."""
        return self.outcome == "ok" and self.acked >= self.needed


@dataclass(frozen=True, slots=True)
class Webhook:
    """The delivery job a final state creates: its id and job data (``worker.store.jobdata``)."""

    job_id: str
    data: bytes


def pacing_step_ms(per_second: float) -> int:
    """The pacing slot of an account (one request per slot); 0 turns pacing off."""
    return max(1, round(1000 / per_second)) if per_second > 0 else 0


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
        account_requests_per_second: float = 0.0,
    ) -> None:
        self.redis = redis
        self.default_webhook_url = default_webhook_url
        self.keys = keys
        self.window_seconds = window_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self.events_max_len = events_max_len
        self.pace_step_ms = pacing_step_ms(account_requests_per_second)
        self._enqueue = scripts.register(redis, "enqueue.lua")
        # A check's record, one per check: those of one turn of the event loop go together.
        self._record = scripts.Batched(scripts.register(redis, "record.lua"))
        self._claim = scripts.register(redis, "publish_claim.lua")
        self._resume = scripts.register(redis, "resume.lua")
        self._webhook = scripts.register(redis, "webhook_settle.lua")

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> ResultStore:
        return cls(
            redis,
            Keys(settings.key_prefix),
            window_seconds=settings.poll_max_seconds,
            result_ttl_seconds=settings.result_ttl_seconds,
            events_max_len=settings.events_max_len,
            default_webhook_url=settings.webhook_url,
            account_requests_per_second=settings.account_max_requests_per_second,
        )

    def check_job_data(self, container_id: str, generation: str) -> bytes:
        """A poll's check job data (``worker.store.jobdata``)."""
        return check_job(container_id, generation, int(time.time() * 1000))

    async def enqueue(
        self, requests: Sequence[EnqueueRequest], *, window_seconds: float | None = None
    ) -> list[Enqueued]:
        """Start polling each container unless it is already being polled (one round trip).

        Times come from Redis' clock; ``window_seconds`` (default: the store's) fixes each new
        poll's window."""
        if not requests:
            return []
        window_ms = round(
            (self.window_seconds if window_seconds is None else window_seconds) * 1000
        )
        # A carousel's parent and children go in one MULTI: none of them starts without the rest.
        # A request whose script asked for a key (lib.lua, need: a container's live carousel)
        # wrote nothing (a carousel's children then skip: their parent did not start): it goes
        # again, in a round of its own, with that key added.
        replies: list[Any] = [None] * len(requests)
        asked: list[list[str]] = [[] for _ in requests]
        pending = list(range(len(requests)))
        while pending:
            carousels = any(requests[i].children for i in pending)
            async with self.redis.pipeline(transaction=carousels) as pipe:
                for i in pending:
                    req = requests[i]
                    generation = uuid.uuid4().hex[:12]
                    await self._enqueue_one(
                        pipe, req, generation, window_ms, children=req.children, extra=asked[i]
                    )
                    for child in req.children:
                        # A child is polled like any container (never published on its own);
                        # its final record reports to this poll of the parent.
                        one = EnqueueRequest(
                            child,
                            req.account,
                            force=req.force,
                            producer=req.producer,
                            traceparent=req.traceparent,
                            platform=req.platform,
                        )
                        await self._enqueue_one(
                            pipe,
                            one,
                            uuid.uuid4().hex[:12],
                            window_ms,
                            parent=(req.container_id, generation),
                        )
                out = await pipe.execute()
            again = []
            at = 0
            for i in pending:
                # A carousel's outcome is its parent's (the first of its calls).
                reply, at = out[at], at + 1 + len(requests[i].children)
                if scripts.ask(reply, asked[i]):
                    again.append(i)
                else:
                    replies[i] = reply
            pending = again
        results = []
        for req, reply in zip(requests, replies, strict=True):
            outcome, status, *why = (text(v) for v in reply)
            results.append(
                Enqueued(
                    req.container_id,
                    outcome,  # type: ignore[arg-type]
                    status,
                    why[0] if why else "",
                    forbidden=why[1:] == ["scope"],
                )
            )
        return results

    async def _enqueue_one(
        self,
        pipe: Pipeline,
        req: EnqueueRequest,
        generation: str,
        window_ms: int,
        *,
        children: tuple[str, ...] = (),
        parent: tuple[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        account = req.account or ""
        await self._enqueue(
            keys=[
                self.keys.result(req.container_id),
                self.keys.inflight,
                self.keys.queue,
                self.keys.accounts,
                self.keys.config,
                self.keys.result(parent[0] if parent else req.container_id),
                self.keys.rate(account or "default"),
                self.keys.job_data(self.keys.job_id(req.container_id, generation)),
                self.keys.history(req.container_id),
                *(self.keys.result(child) for child in children),
                *extra,
            ],
            args=EnqueueArgs(
                container_id=req.container_id,
                window_ms=window_ms,
                ttl_seconds=self.result_ttl_seconds,
                generation=generation,
                job_id_base=self.keys.job_id_base(req.container_id),
                job_data=self.check_job_data(req.container_id, generation),
                account=account,
                force=flag(req.force),
                publish=flag(req.publish),
                webhook_url=req.webhook_url or "",
                pace_step_ms=self.pace_step_ms,
                intake_entry=req.intake_entry or "",
                reply_to=req.reply_to or "",
                parent_id=parent[0] if parent else "",
                parent_generation=parent[1] if parent else "",
                children=",".join(children),
                children_count=len(children),
                producer=req.producer.name,
                producer_force=flag(req.producer.force),
                producer_publish=flag(req.producer.publish),
                producer_webhook=flag(req.producer.webhook),
                producer_accounts=req.producer.lua_accounts(),
                traceparent=req.traceparent or "",
                platform=req.platform,
                result_prefix=self.keys.result_prefix,
            ).argv(),
            client=pipe,
        )

    async def publish_config(self, *, webhook_signing: bool) -> None:
        """Tell producers this worker's pacing (their enqueue reserves the first check's slot)
        and whether it can sign webhooks (a producer refuses a webhook URL when it cannot)."""
        await self.redis.hset(  # type: ignore[misc]
            self.keys.config,
            mapping={
                "pace_step_ms": self.pace_step_ms,
                "webhook_signing": "1" if webhook_signing else "0",
            },
        )

    async def workers_sign_webhooks(self) -> bool | None:
        """What the workers last published: True / False, None before any worker ran."""
        raw = await self.redis.hget(self.keys.config, "webhook_signing")  # type: ignore[misc]
        return None if raw is None else text(raw) == "1"

    async def load(self, container_id: str) -> PollResult | None:
        raw = await self.redis.hgetall(self.keys.result(container_id))  # type: ignore[misc]
        return PollResult.from_hash(raw) if raw else None

    async def history(self, container_id: str) -> list[HistoryEvent]:
        """The container's history, oldest first (``worker.store.history.read_history``)."""
        return await read_history(self.redis, self.keys, container_id)

    async def load_many(self, container_ids: Sequence[str]) -> list[PollResult | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in container_ids:
                pipe.hgetall(self.keys.result(cid))
            raws = await pipe.execute()
        return [PollResult.from_hash(raw) if raw else None for raw in raws]

    def webhook_for(self, current: PollResult, body: bytes, now_ms: int) -> Webhook | None:
        """The delivery job of a final state, or None when the poll has no webhook.

        The job carries its own URL and body from here on: a retry an hour later still goes to
        this poll's receiver with this poll's final state, whatever a later poll of the same
        container (``force``) or a changed ``WEBHOOK_URL`` says."""
        url = current.webhook_url or self.default_webhook_url
        if not url:
            return None
        job_id = self.keys.webhook_job_id(current.container_id, current.generation)
        data = delivery_job(current.container_id, current.generation, body, url, now_ms)
        return Webhook(job_id, data)

    async def record(
        self,
        job: ClaimedJob,
        current: PollResult,
        decision: Decision,
        *,
        checked_at: float | None = None,
        changes: Changes | None = None,
        webhook: Webhook | None = None,
        history: Sequence[str] = (),
    ) -> Recorded:
        """Write one run's outcome, if ``job`` (this run) still owns the poll; ``history``: the
        entries it adds to the container's history (``worker.core.history.record_entries``),
        stamped by the script."""
        fields = record_fields(current, decision, checked_at=checked_at, changes=changes)
        event = final_event(current, decision, fields)
        job_id = job.job_id
        want_ms = int(decision.next_check_at * 1000) if decision.next_check_at else 0
        args = RecordArgs(
            token=job.token,
            generation=current.generation,
            job_id=job_id,
            final=flag(decision.final),
            want_ms=want_ms,
            pace_step_ms=self.pace_step_ms,
            ttl_seconds=self.result_ttl_seconds,
            events_max_len=self.events_max_len,
            container_id=current.container_id,
            webhook_job_id=webhook.job_id if webhook else "",
            webhook_job_data=webhook.data if webhook else b"",
            fields_count=len(fields),
            status=decision.status,
            error_message=decision.error_message or "",
            waiting_parent=flag(current.is_carousel and current.children_ready_at is None),
            history=SEPARATOR.join(history),
            result_prefix=self.keys.result_prefix,
            history_prefix=self.keys.history_prefix,
            check_prefix=self.keys.check_job_prefix,
        ).argv()
        for k, v in fields.items():
            args += [k, v]
        for k, v in event.items():
            args += [k, v]
        reply = await scripts.call(
            self._record, keys=self._record_keys(job_id, current, webhook), args=args
        )
        outcome = text(reply[0])
        if outcome != "ok":
            return Recorded("stale", text(reply[1]))
        at = text(reply[2])
        return Recorded(
            "ok", event_id=text(reply[1]), next_run_at=int(float(at)) / 1000 if at else None
        )

    def _record_keys(self, job_id: str, current: PollResult, webhook: Webhook | None) -> list[str]:
        """record.lua's KEYS (its header says which is which)."""
        own = self.keys.result(current.container_id)
        story = self.keys.history(current.container_id)
        parent = current.carousel_parent
        return [
            own,
            self.keys.inflight,
            self.keys.events,
            self.keys.queue,
            self.keys.job_lock(job_id),
            self.keys.job_tries(job_id),
            self.keys.job_data(job_id),
            self.keys.webhook_queue,
            self.keys.rate(current.account or "default"),
            self.keys.job_data(webhook.job_id) if webhook else own,
            # The parent as this run read it; one named since is asked for by the script.
            self.keys.result(parent) if parent else own,
            story,
            self.keys.history(parent) if parent else story,
        ]

    async def claim_publish(
        self,
        job: ClaimedJob,
        current: PollResult,
        *,
        max_attempts: int,
        replicas: int = 0,
        wait_ms: int = 1000,
    ) -> PublishClaim:
        """Claim the publish call (``publish_claim.lua``) and, with ``replicas``, ``WAIT`` for
        that many replicas to hold the claim, on the same connection (WAIT counts the writes of
        its own connection) and in one round trip. Safe to repeat after a lost reply."""
        keys = [
            self.keys.result(current.container_id),
            self.keys.job_lock(job.job_id),
            self.keys.history(current.container_id),
        ]
        args: list[str | int] = [job.token, current.generation, max_attempts]
        if replicas <= 0:
            return PublishClaim(text(await self._claim(keys=keys, args=args)))
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._claim(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, wait_ms)
            outcome, acked = await pipe.execute()
        return PublishClaim(text(outcome), acked=int(acked), needed=replicas)

    async def settle_webhook(self, job: ClaimedJob, attempt: WebhookAttempt) -> bool:
        """Record one delivery attempt and end or re-schedule its job (fenced)."""
        generation, outcome, reason, body = (
            attempt.generation,
            attempt.outcome,
            attempt.reason,
            attempt.body,
        )
        container_id = str(job.args[0])
        dead: list[str | bytes] = []
        if outcome is WebhookOutcome.DEAD:
            try:
                status = str(json.loads(body).get("status", ""))
            except (ValueError, AttributeError):
                status = ""
            fields = {
                "container_id": container_id,
                "status": status,
                "generation": generation,
                "delivery_id": job.job_id,
                "url": attempt.url,
                "attempts": str(attempt.attempt),
                "reason": reason,
            }
            if attempt.target:
                fields["target"] = attempt.target
            dead = [part for pair in fields.items() for part in pair]
            dead += ["body", body]
        reply = await self._webhook(
            keys=[
                self.keys.result(container_id),
                self.keys.webhook_queue,
                self.keys.job_lock(job.job_id),
                self.keys.job_tries(job.job_id),
                self.keys.job_data(job.job_id),
                self.keys.webhook_dead_letters,
                self.keys.history(container_id),
            ],
            args=[
                WebhookSettleArgs(
                    token=job.token,
                    job_id=job.job_id,
                    generation=generation,
                    outcome=outcome,
                    attempt=attempt.attempt,
                    delay_ms=int(attempt.delay_s * 1000),
                    reason=reason,
                    job_ttl_ms=self.result_ttl_seconds * 1000,
                    dead_letters_max_len=WEBHOOK_DEAD_LETTERS_MAX_LEN,
                    history=webhook_entry(outcome, attempt.attempt, reason),
                ).to_json(),
                *dead,
            ],
        )
        return bool(reply)

    async def resume(self, result: PollResult) -> str:
        """Give a live poll whose job is gone its job back (the reconciler's repair)."""
        job_id = self.keys.job_id(result.container_id, result.generation)
        reply = await self._resume(
            keys=[
                self.keys.result(result.container_id),
                self.keys.queue,
                self.keys.job_data(job_id),
                self.keys.job_lock(job_id),
            ],
            args=[
                result.generation,
                job_id,
                self.check_job_data(result.container_id, result.generation),
                self.result_ttl_seconds,
            ],
        )
        return text(reply)

    async def inflight_past(self, cutoff: float, limit: int = 500) -> list[str]:
        """Containers whose window ended before ``cutoff`` but that are still listed in flight."""
        ids = await self.redis.zrangebyscore(self.keys.inflight, "-inf", cutoff, start=0, num=limit)
        return [text(i) for i in ids]

    async def forget_inflight(self, container_id: str) -> None:
        await self.redis.zrem(self.keys.inflight, container_id)


def final_event(
    current: PollResult, decision: Decision, fields: Mapping[str, str]
) -> dict[str, str]:
    """The fields of the poll's one final event (``{prefix}:events``), from the hash fields
    the same record writes; empty when the decision is not final. Pure."""
    if not decision.final:
        return {}
    checks = decision.checks if decision.checks is not None else current.checks
    event = {
        "container_id": current.container_id,
        "generation": current.generation,
        "status": decision.status,
        "error_message": decision.error_message or "",
        "account": current.account or "",
        "checks": str(checks),
        "platform": current.platform,
    }
    if decision.error is not None:
        event["last_error"] = fields["last_error"]
    if fields.get("media_id"):
        event["media_id"] = fields["media_id"]
    return event


def record_fields(
    current: PollResult,
    decision: Decision,
    *,
    checked_at: float | None,
    changes: Changes | None,
) -> dict[str, str]:
    """The hash fields a decision writes (an empty value deletes the field). Pure."""
    fields: dict[str, str] = {}
    if decision.touch:
        fields.update(
            status=decision.status,
            final="1" if decision.final else "0",
            error_message=decision.error_message or "",
            error_explanation=explain_error_message(decision.error_message, current.platform),
        )
        if decision.checks is not None:
            fields["checks"] = str(decision.checks)
        if decision.last_api_status is not None:
            fields["last_api_status"] = decision.last_api_status
        if checked_at is not None:
            fields["last_checked_at"] = stamp(checked_at)
        if not decision.spent:
            fields["throttled"] = str(current.throttled + 1)
            fields["window_delay"] = f"{current.window_delay + decision.delay_added:.3f}"
            if checked_at is not None:
                fields["last_throttled_at"] = stamp(checked_at)
        if decision.error is not None:
            err = decision.error
            fields.update(
                last_error=f"{err}; {decision.hint}" if decision.hint else str(err),
                last_error_kind=err.kind,
                last_error_code="" if err.code is None else str(err.code),
                last_error_subcode="" if err.subcode is None else str(err.subcode),
                last_error_fbtrace_id=err.fbtrace_id or "",
            )
    if changes:
        fields.update(changes.hash_fields())
    return fields
