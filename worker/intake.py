"""The language-neutral door: a Redis stream any pipeline can feed with one XADD.

    XADD threads-poller:intake * container_id 17889615691921648 [account 1234] [force 1]

Workers read it through one consumer group. An entry is acknowledged (and deleted) only after its
poll exists in Redis, so a worker that dies mid-batch leaves its entries pending, and another worker
claims them after ``INTAKE_CLAIM_IDLE_SECONDS``. An entry that cannot be used goes to the
dead-letter stream with the reason and the original fields; none is dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker import metrics
from worker.ids import InvalidIdError, validate_id, validate_webhook_url
from worker.keys import INTAKE_GROUP
from worker.store import EnqueueRequest, ResultStore

log = logging.getLogger("threads_poller.intake")

ALLOWED_FIELDS = frozenset({"container_id", "account", "force", "publish", "webhook_url"})
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"", "0", "false", "no"})
DEAD_LETTERS_MAX_LEN = 100_000

Entry = tuple[bytes, dict[bytes, bytes]]


class BadEntryError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    reason: str
    fields: dict[str, str]


def _show(fields: dict[bytes, bytes], limit: int = 1024) -> dict[str, str]:
    shown = {}
    for k, v in list(fields.items())[:20]:
        key = k.decode("utf-8", "replace")[:64]
        value = v.decode("utf-8", "replace")
        shown[key] = value if len(value) <= limit else value[:limit] + "...[truncated]"
    return shown


def parse_entry(fields: dict[bytes, bytes], *, max_bytes: int) -> EnqueueRequest:
    """Pure: one stream entry to a request, or BadEntryError with a reason a human can act on."""
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > max_bytes:
        raise BadEntryError(f"entry is {size} bytes; the limit is {max_bytes}")
    try:
        text = {k.decode("utf-8"): v.decode("utf-8") for k, v in fields.items()}
    except UnicodeDecodeError:
        raise BadEntryError("entry is not UTF-8 text") from None
    unknown = sorted(set(text) - ALLOWED_FIELDS)
    if unknown:
        raise BadEntryError(
            f"unknown field(s) {', '.join(unknown)}; expected container_id and optionally "
            "account, force, publish, webhook_url"
        )
    if "container_id" not in text:
        raise BadEntryError("missing field container_id")
    flags = {name: _flag(text, name) for name in ("force", "publish")}
    try:
        cid = validate_id(text["container_id"])
        account = text.get("account") or None
        account = validate_id(account, what="account id") if account is not None else None
        hook = text.get("webhook_url") or None
        hook = validate_webhook_url(hook) if hook is not None else None
    except InvalidIdError as exc:
        raise BadEntryError(str(exc)) from None
    return EnqueueRequest(cid, account, flags["force"], flags["publish"], hook)


def _flag(text: dict[str, str], name: str) -> bool:
    word = text.get(name, "").strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise BadEntryError(f"{name} must be 1/0/true/false, got {word[:20]!r}")
    return word in TRUE_WORDS


class IntakeConsumer:
    def __init__(
        self,
        redis: Redis,
        store: ResultStore,
        *,
        consumer: str,
        batch_size: int,
        claim_idle_seconds: float,
        max_entry_bytes: int,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.store = store
        self.stream = store.keys.intake
        self.dead = store.keys.dead_letters
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.max_entry_bytes = max_entry_bytes
        self.block_ms = block_ms
        self.accepted = 0
        self.dead_lettered = 0

    async def ensure_group(self) -> None:
        try:
            # From id 0: entries written before any worker existed are consumed too.
            await self.redis.xgroup_create(self.stream, INTAKE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.ensure_group()
                while True:
                    await self.claim_stale()
                    await self.read_once()
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("intake consumer error; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def read_once(self) -> int:
        reply = await self.redis.xreadgroup(
            INTAKE_GROUP,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=self.block_ms,
        )
        entries: list[Entry] = [e for _stream, batch in reply or [] for e in batch]
        await self.process(entries)
        return len(entries)

    async def claim_stale(self) -> int:
        """Take over entries a dead worker read but never acknowledged."""
        reply = await self.redis.xautoclaim(
            self.stream,
            INTAKE_GROUP,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch_size,
        )
        entries: list[Entry] = [e for e in reply[1] if e and e[1] is not None]
        # Entries deleted while pending come back as ids without fields: just acknowledge them.
        gone = [e[0] if isinstance(e, tuple | list) else e for e in reply[1] if not e or not e[1]]
        if gone:
            await self.redis.xack(self.stream, INTAKE_GROUP, *gone)
        await self.process(entries)
        return len(entries)

    async def process(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        good: list[tuple[bytes, EnqueueRequest]] = []
        dead: list[DeadLetter] = []
        for entry_id, fields in entries:
            try:
                good.append((entry_id, parse_entry(fields, max_bytes=self.max_entry_bytes)))
            except BadEntryError as exc:
                dead.append(DeadLetter(entry_id.decode(), str(exc), _show(fields)))
        # The polls must exist before the entries are acknowledged: a crash in between means the
        # entries are read again, and enqueue is idempotent.
        await self.store.enqueue([req for _, req in good])
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=True) as tx:
            for d in dead:
                tx.xadd(
                    self.dead,
                    {
                        "entry_id": d.entry_id,
                        "reason": d.reason,
                        "fields": json.dumps(d.fields, ensure_ascii=False),
                    },
                    maxlen=DEAD_LETTERS_MAX_LEN,
                    approximate=True,
                )
            tx.xack(self.stream, INTAKE_GROUP, *ids)
            tx.xdel(self.stream, *ids)
            await tx.execute()
        self.accepted += len(good)
        self.dead_lettered += len(dead)
        metrics.observe_intake(accepted=len(good), dead_lettered=len(dead))
        for d in dead:
            log.warning("intake entry dead-lettered: %s", d.reason, extra={"entry_id": d.entry_id})
