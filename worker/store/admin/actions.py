"""The operator's actions (``worker.store.admin``): cancel, replay, discard, and the audit of
each. Every write is one Lua script (``lua/cancel.lua``, ``lua/webhook_replay.lua``,
``lua/intake_replay.lua``) or one command, so an action is atomic with respect to the workers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from redis.asyncio import Redis

from config import Settings
from config.producers import DEFAULT_PRODUCER, PRODUCER_NAME
from worker.core.history import cancel_entry
from worker.core.result import PollResult, stamp
from worker.core.states import State
from worker.core.webhooks import body_for
from worker.store import scripts
from worker.store.admin.reads import AdminReads
from worker.store.admin.views import (
    AUDIT_MAX_LEN,
    MAX_REASON_LENGTH,
    STATS_TTL_SECONDS,
    TRUNCATED,
    Cancelled,
    CancelOutcome,
    DeadLetterKind,
    Replayed,
    ReplayOutcome,
    clean_reason,
    validate_stream_id,
)
from worker.store.jobdata import delivery_job
from worker.store.queue import text
from worker.store.results import ResultStore
from worker.store.script_args import CancelArgs


class AdminStore(AdminReads):
    """The operator's view of one deployment (one key prefix): the reads (``AdminReads``) and
    the actions, each one script or one command."""

    def __init__(self, results: ResultStore) -> None:
        super().__init__(results)
        self._cancel = scripts.register(self.redis, "cancel.lua")
        self._webhook_replay = scripts.register(self.redis, "webhook_replay.lua")
        self._intake_replay = scripts.register(self.redis, "intake_replay.lua")

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> AdminStore:
        return cls(ResultStore.from_settings(redis, settings))

    # ----- dead letters ---------------------------------------------------------------------

    async def discard(self, kind: DeadLetterKind, letter_id: str) -> bool:
        """Delete a dead letter; False when there was none with that id."""
        letter_id = validate_stream_id(letter_id)
        return bool(await self.redis.xdel(self.dead_stream(kind), letter_id))

    async def replay(self, kind: DeadLetterKind, letter_id: str) -> Replayed:
        letter_id = validate_stream_id(letter_id)
        if kind is DeadLetterKind.INTAKE:
            # Back to the stream it came from: its producer's scope applies again (a replay
            # onto the default stream would give a producer's entry the default's powers).
            letter = await self.dead_letter(kind, letter_id)
            if letter is None:
                return Replayed(ReplayOutcome.GONE)
            producer = letter.producer or DEFAULT_PRODUCER
            if not PRODUCER_NAME.match(producer):
                return Replayed(ReplayOutcome.UNREADABLE)
            reply = await self._intake_replay(
                keys=[self.keys.dead_letters, self.keys.intake_of(producer)],
                args=[letter_id, TRUNCATED],
            )
            outcome = ReplayOutcome(text(reply[0]))
            return Replayed(outcome, text(reply[1]) if len(reply) > 1 else "")
        letter = await self.dead_letter(kind, letter_id)
        if letter is None:
            return Replayed(ReplayOutcome.GONE)
        cid = letter.fields.get("container_id", "")
        generation = letter.fields.get("generation", "")
        raw_body = letter.raw_body
        if not (cid and generation and raw_body):
            return Replayed(ReplayOutcome.UNREADABLE)
        job_id = letter.fields.get("delivery_id") or self.keys.webhook_job_id(cid, generation)
        now_ms = int(await self.now() * 1000)
        data = delivery_job(cid, generation, raw_body.encode(), letter.target or None, now_ms)
        reply = await self._webhook_replay(
            keys=[
                self.keys.webhook_dead_letters,
                self.keys.webhook_queue,
                self.keys.job_data(job_id),
                self.keys.job_lock(job_id),
                self.keys.job_tries(job_id),
                self.keys.result(cid),
            ],
            args=[letter_id, job_id, data, self.results.result_ttl_seconds * 1000, generation],
        )
        return Replayed(ReplayOutcome(text(reply)))

    # ----- the operators' actions -----------------------------------------------------------

    async def note_action(
        self,
        *,
        action: str,
        target: str,
        reason: str,
        actor: str,
        outcome: str,
    ) -> str:
        """Keep what an operator did (and why, and with which key) in ``{prefix}:audit``;
        its stream id (Redis time)."""
        fields = {
            "action": action,
            "target": target,
            "reason": clean_reason(reason),
            "actor": actor[:MAX_REASON_LENGTH],
            "outcome": outcome,
        }
        return text(
            await self.redis.xadd(self.keys.audit, fields, maxlen=AUDIT_MAX_LEN, approximate=True)  # type: ignore[arg-type]
        )

    # ----- cancel ---------------------------------------------------------------------------

    async def cancel(
        self, container_id: str, *, reason: str | None = None, actor: str | None = None
    ) -> Cancelled:
        """Make a live poll final CANCELLED (see the module docstring); ``actor`` (the name of
        the operator's key) is kept with the reason in ``last_error``."""
        note = clean_reason(reason)
        who = f" by {clean_reason(actor)}" if actor else ""
        last_error = f"cancelled{who}: {note}" if note else f"cancelled{who}"
        for _ in range(3):
            current = await self.results.load(container_id)
            if current is None:
                return Cancelled(CancelOutcome.UNKNOWN)
            if current.final:
                return Cancelled(CancelOutcome.FINAL, current.status, result=current)
            now = await self.now()
            reply = await self._cancel_poll(container_id, current, last_error, now)
            outcome, detail = text(reply[0]), text(reply[1])
            if outcome == "changed":
                continue
            if outcome == "cancelled":
                after = await self.results.load(container_id)
                return Cancelled(CancelOutcome.CANCELLED, State.CANCELLED, detail, after)
            return Cancelled(CancelOutcome(outcome), detail, result=current)
        return Cancelled(CancelOutcome.CHANGED)

    def _cancel_webhook(
        self, current: PollResult, last_error: str, now: float
    ) -> tuple[str, str, bytes]:
        """The delivery of the cancelled state, when the poll has a webhook: its job id, its
        data's key and its data (all empty without one)."""
        if not (current.webhook_url or self.results.default_webhook_url):
            return ("", "", b"")
        view = dataclasses.replace(
            current,
            status=State.CANCELLED,
            final=True,
            last_error=last_error,
            finalized_at=float(stamp(now)),
            next_check_at=None,
        )
        delivery = self.keys.webhook_job_id(current.container_id, current.generation)
        webhook = self.results.webhook_for(current, body_for(view, delivery), int(now * 1000))
        if webhook is None:
            return ("", "", b"")
        return (webhook.job_id, self.keys.job_data(webhook.job_id), webhook.data)

    async def _cancel_poll(
        self, container_id: str, current: PollResult, last_error: str, now: float
    ) -> Any:
        """One run of ``cancel.lua`` on the poll as read (``current``): its raw reply."""
        hook = self._cancel_webhook(current, last_error, now)
        own = self.keys.result(container_id)
        job_id = self.keys.job_id(container_id, current.generation)
        return await scripts.call(
            self._cancel,
            keys=[
                own,
                self.keys.inflight,
                self.keys.events,
                self.keys.queue,
                self.keys.webhook_queue,
                self.keys.job_data(job_id),
                self.keys.job_tries(job_id),
                hook[1] or own,
                # This minute's counts as the clock read above says (the script asks for
                # the right one when the minute turned since) and the parent as read.
                self.keys.stats(int(now) // 60),
                self.keys.result(current.carousel_parent) if current.carousel_parent else own,
                self.keys.history(container_id),
            ],
            args=CancelArgs(
                container_id=container_id,
                generation=current.generation,
                job_id_base=self.keys.job_id_base(container_id),
                last_error=last_error,
                ttl_seconds=self.results.result_ttl_seconds,
                events_max_len=self.results.events_max_len,
                webhook_job_id=hook[0],
                webhook_job_data=hook[2],
                stats_prefix=self.keys.stats_prefix,
                stats_ttl_seconds=STATS_TTL_SECONDS,
                history=cancel_entry(last_error),
                result_prefix=self.keys.result_prefix,
                check_prefix=self.keys.check_job_prefix,
            ).argv(),
        )
