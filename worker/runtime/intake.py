"""The language-neutral door: a Redis stream any pipeline can feed with one XADD.

    XADD threads-poller:intake * container_id 17889615691921648 [account 1234] [force 1]
        [publish 1] [webhook_url https://hooks.example.com/threads]
    XADD threads-poller:intake * container_id PARENT children A,B,C [publish 1]   (a carousel)

Workers read it through one consumer group. An entry is acknowledged (and deleted) only after its
poll exists in Redis, so a worker that dies mid-batch leaves its entries pending, and another worker
claims them after ``INTAKE_CLAIM_IDLE_SECONDS``. An entry that cannot be used goes to the
dead-letter stream with the reason and the original fields (secrets redacted); none is dropped
silently. A webhook URL gets the enqueue check of every door (``worker.store.targets``): the SSRF
guard, and the workers' own ``WEBHOOK_SECRET``, without which no delivery could be signed.

Each named producer (``PRODUCERS``, README "Producers") has a stream of its own,
``{prefix}:intake:{name}``, and one ``IntakeConsumer`` per stream applies that producer's scope:
an entry asking for an account, a flag or a webhook the producer may not use is dead-lettered
with the reason, and the enqueue script refuses (likewise dead-lettered) a restart of a poll
another producer started. The plain ``{prefix}:intake`` is the ``default`` producer's.

Every worker process joins the group as a consumer of its own name, and Redis keeps a consumer
until it is deleted: a worker removes its own on a clean stop (``close``), and consumers idle for
longer than ``consumer_max_idle_seconds`` are removed at start-up and on a clean stop. Only
consumers with no pending entries are removed: ``XGROUP DELCONSUMER`` drops a consumer's pending
entries from the group, and nothing would ever deliver them again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from api_client.redact import redact
from config.producers import DEFAULT_PRODUCER, UNRESTRICTED, Scope, refusal_message
from worker.core.errors import BadEntryError, InvalidIdError
from worker.core.ids import poll_account, validate_children, validate_id, validate_platform
from worker.core.targets import WebhookPolicy, check_target, parse_target
from worker.core.tracing import TraceparentError, optional_traceparent
from worker.ops import metrics, tracing
from worker.ops.loops import every
from worker.store import scripts
from worker.store.keys import INTAKE_GROUP
from worker.store.results import EnqueueRequest, ResultStore
from worker.store.script_args import IntakeTakeArgs
from worker.store.targets import Resolve, check_webhook_urls

log = logging.getLogger("threads_poller.intake")

ALLOWED_FIELDS = frozenset(
    {
        "container_id",
        "platform",
        "account",
        "force",
        "publish",
        "webhook_url",
        "reply_to",
        "children",
        "traceparent",
    }
)
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"", "0", "false", "no"})
DEAD_LETTERS_MAX_LEN = 100_000
# A live consumer looks at the stream every ``IDLE_PAUSE_MS`` at most, so an hour without a read
# means a dead process.
CONSUMER_MAX_IDLE_SECONDS = 3600.0

# The intake's two scripts: worker/store/lua/intake_take.lua (read new entries, or claim stale
# ones, judged inside Redis) and intake_consumers.lua (delete idle consumers).
# More fields than any valid entry has (7 known names) and far fewer than an entry that would
# hurt: the rest is refused by name.
MAX_FIELDS = 32
# An entry taken this many times without being acknowledged made its workers fail (or die)
# each time: it is dead-lettered without its fields, and the entries behind it go on.
MAX_DELIVERIES = 5

# An idle consumer's pause between looks: the latency of an entry written to an idle intake.
IDLE_PAUSE_MS = 100
# Entries another consumer left are taken over once idle for INTAKE_CLAIM_IDLE_SECONDS, so
# looking for them every tenth of that (not at every look for new ones) takes them over as
# surely, at most 10 % later: an idle worker's intake costs one script call per look, not two.
STALE_LOOKS_PER_CLAIM_IDLE = 10

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Taken:
    """An entry as the take script judged it: its size, how often it was delivered, and its
    fields (whole when it passed; a bounded preview, or nothing, when it did not)."""

    entry_id: bytes
    fields_count: int
    size: int
    deliveries: int
    preview: dict[bytes, bytes]


def _bytes(value: bytes | str | int) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    reason: str
    fields: dict[str, str]
    # The named producer whose stream the entry came from ("" for default's): a replay goes
    # back there, under the same scope.
    producer: str = ""


# A field named like a credential has its value replaced, whatever the value: a producer that
# pastes a token nobody here knows (so no redaction by value can find it) must not have it kept
# in the dead letter, shown by the console, the CLI and the API.
SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|auth|key|cookie|credential|session|signature|bearer|private",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def _show(
    fields: dict[bytes, bytes], limit: int = 1024, secrets: Iterable[str] = ()
) -> dict[str, str]:
    """The fields as a dead letter keeps them: at most 20, each cut at ``limit`` characters,
    tokens redacted (a producer may have sent one by mistake), and the value of every field
    whose name says it is a secret replaced."""
    known = list(secrets)
    shown = {}
    for k, v in list(fields.items())[:20]:
        name = k.decode("utf-8", "replace")[:64]
        key = redact(name, known)
        if SECRET_NAME.search(name):
            shown[key] = REDACTED
            continue
        value = v.decode("utf-8", "replace")
        value = value if len(value) <= limit else value[:limit] + "...[truncated]"
        shown[key] = redact(value, known)
    return shown


def parse_entry(
    fields: dict[bytes, bytes], *, max_bytes: int, policy: WebhookPolicy | None = None
) -> EnqueueRequest:
    """Pure: one stream entry to a request, or BadEntryError with a reason a human can act on.

    With ``policy``, a webhook URL also gets the checks that need no DNS (the secret, an IP
    literal); ``IntakeConsumer.process`` resolves host names."""
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
            "account, force, publish, webhook_url, reply_to, children, traceparent, platform"
        )
    if "container_id" not in text:
        raise BadEntryError("missing field container_id")
    flags = {name: _flag(text, name) for name in ("force", "publish")}
    try:
        cid = validate_id(text["container_id"])
        platform = validate_platform(text.get("platform"))
        account = poll_account(text.get("account") or None, platform)
        hook = text.get("webhook_url") or None
        if hook is not None:
            target = parse_target(hook)
            if policy is not None:
                check_target(target, policy)
            hook = target.url
        reply_to = text.get("reply_to") or None
        reply_to = validate_id(reply_to, what="reply_to id") if reply_to is not None else None
        children = text.get("children") or None
        kids = (
            validate_children(children, parent=cid, max_children=platform.max_children)
            if children is not None
            else ()
        )
    except InvalidIdError as exc:
        raise BadEntryError(str(exc)) from None
    try:
        # The producer's trace (README "Tracing"): W3C traceparent, version 00, or nothing.
        trace = optional_traceparent(text.get("traceparent"))
    except TraceparentError as exc:
        raise BadEntryError(str(exc)) from None
    return EnqueueRequest(
        cid,
        account,
        flags["force"],
        flags["publish"],
        hook,
        reply_to=reply_to,
        children=kids,
        traceparent=trace,
        platform=platform.name.value,
    )


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
        consumer_max_idle_seconds: float = CONSUMER_MAX_IDLE_SECONDS,
        webhook_policy: WebhookPolicy | None = None,
        webhook_resolve: Resolve | None = None,
        secrets: Callable[[], Iterable[str]] = lambda: (),
        scope: Scope = UNRESTRICTED,
    ) -> None:
        if consumer_max_idle_seconds <= 0:
            raise ValueError("consumer_max_idle_seconds must be > 0")
        self.redis = redis
        self.store = store
        # The producer this stream belongs to: its entries get its scope, and nothing more.
        self.scope = scope
        self.stream = store.keys.intake_of(scope.name)
        self.producer_field = "" if scope.name == DEFAULT_PRODUCER else scope.name
        self.dead = store.keys.dead_letters
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.max_entry_bytes = max_entry_bytes
        # How long an idle consumer waits before looking again (it took nothing).
        self.idle_pause = min(block_ms, IDLE_PAUSE_MS) / 1000
        self.consumer_max_idle_ms = int(consumer_max_idle_seconds * 1000)
        # The worker passes its own (webhook_policy(settings, worker=True)): it knows whether
        # it can sign.
        self.webhook_policy = webhook_policy or WebhookPolicy()
        self._resolve = webhook_resolve
        self._secrets = secrets
        self._delete_consumers = scripts.register(redis, "intake_consumers.lua")
        self._take_script = scripts.register(redis, "intake_take.lua")
        self.accepted = 0
        self.dead_lettered = 0
        # ``run``'s state between its rounds.
        self._group_ready = False
        self._pruned = False
        self._stale_due = 0.0

    async def ensure_group(self) -> None:
        try:
            # From id 0: entries written before any worker existed are consumed too.
            await self.redis.xgroup_create(self.stream, INTAKE_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def prune_consumers(self, *, including_self: bool = False) -> list[str]:
        """Delete the group's consumers idle for longer than the bound (and this one, with
        ``including_self``), of those with no pending entry; returns the names deleted."""
        try:
            reply = await self._delete_consumers(
                keys=[self.stream],
                args=[
                    INTAKE_GROUP,
                    self.consumer if including_self else "",
                    self.consumer_max_idle_ms,
                ],
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return []  # no stream or no group yet: no consumer either
            raise
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in reply]
        others = [n for n in names if n != self.consumer]
        if others:
            log.info(
                "removed %d idle intake consumer(s) with no pending entries",
                len(others),
                extra={"consumers": others[:20]},
            )
        return names

    def _refusal(self, taken: Taken, secrets: list[str]) -> DeadLetter:
        if taken.deliveries > MAX_DELIVERIES:
            size = f"{taken.fields_count} fields, {taken.size} bytes"
            reason = (
                f"entry delivered {taken.deliveries} times and never processed (the workers "
                f"failed on it each time); {size}; its fields are not kept"
            )
            return DeadLetter(taken.entry_id.decode(), reason, {})
        many = taken.fields_count > MAX_FIELDS
        if taken.size > self.max_entry_bytes:
            fields = f"{taken.fields_count} fields" + (f", at most {MAX_FIELDS}" if many else "")
            reason = f"entry is {taken.size} bytes; the limit is {self.max_entry_bytes} ({fields})"
        else:
            reason = (
                f"entry has {taken.fields_count} fields; the limit is {MAX_FIELDS} "
                f"({taken.size} bytes)"
            )
        return DeadLetter(taken.entry_id.decode(), reason, _show(taken.preview, secrets=secrets))

    async def close(self) -> None:
        """Clean stop, once ``run()`` has been cancelled: leave the consumer group.

        This consumer is deleted unless entries are still pending for it (another worker claims
        those after ``INTAKE_CLAIM_IDLE_SECONDS``; the consumer is pruned once it is idle and has
        none); idle consumers of other, dead processes are pruned too. Never raises a Redis
        error: a stop must not fail because Redis is away.
        """
        try:
            deleted = await self.prune_consumers(including_self=True)
        except (RedisError, OSError) as exc:
            log.warning("could not remove the intake consumer on stop: %r", exc)
            return
        if self.consumer in deleted:
            return
        with contextlib.suppress(RedisError, OSError):
            summary = await self.redis.xpending(self.stream, INTAKE_GROUP)
            mine = [
                int(c["pending"])
                for c in summary.get("consumers") or []
                if c["name"] in (self.consumer, self.consumer.encode())
            ]
            if mine and mine[0] > 0:
                log.warning(
                    "intake consumer kept on stop: %d entries pending for it; another worker "
                    "claims them once they are idle",
                    mine[0],
                    extra={"consumer": self.consumer},
                )

    async def run(self) -> None:
        """Take entries until cancelled: at once again after a round that took some, after
        ``idle_pause`` after one that took none, and after 0.5 s, 1 s, ... up to 30 s while
        rounds fail (Redis away)."""
        await every(
            "intake consumer",
            self.idle_pause,
            self._round,
            backoff=(0.5, 30.0),
            logger=log,
            extra={"producer": self.scope.name},
        )

    async def _round(self) -> float | None:
        """One round of ``run``: the group made (again, after a failed round: a Redis that lost
        its data lost the group), dead workers' consumers pruned (once per process), entries
        left by a dead worker claimed when that look is due, new entries read."""
        if not self._group_ready:
            await self.ensure_group()
            self._group_ready = True
            self._stale_due = 0.0
            if not self._pruned:
                # Once per process: consumers left behind by workers that died.
                self._pruned = True
                try:
                    await self.prune_consumers()
                except (RedisError, OSError) as exc:
                    log.warning("could not prune idle intake consumers: %r", exc)
        try:
            taken = 0
            if time.monotonic() >= self._stale_due:
                self._stale_due = time.monotonic() + max(
                    self.idle_pause, self.claim_idle_ms / 1000 / STALE_LOOKS_PER_CLAIM_IDLE
                )
                taken = await self.claim_stale()
            taken += await self.read_once()
        except Exception:
            self._group_ready = False
            raise
        # The script cannot block (XREADGROUP BLOCK would hand the entry to redis-py whole): an
        # idle consumer looks again after a short pause, a busy one at once.
        return None if taken == 0 else 0.0

    async def read_once(self) -> int:
        """Take new entries (none waits: see ``run``); returns how many were taken."""
        return await self._take("new")

    async def claim_stale(self) -> int:
        """Take over entries a dead worker read but never acknowledged."""
        return await self._take("claim")

    async def _take(self, mode: str) -> int:
        reply = await self._take_script(
            keys=[self.stream],
            args=IntakeTakeArgs(
                group=INTAKE_GROUP,
                consumer=self.consumer,
                mode=mode,
                count=self.batch_size,
                max_bytes=self.max_entry_bytes,
                max_fields=MAX_FIELDS,
                max_deliveries=MAX_DELIVERIES,
                claim_idle_ms=self.claim_idle_ms,
            ).argv(),
        )
        entries: list[Entry] = []
        refused: list[Taken] = []
        for kind, entry_id, nfields, size, deliveries, flat in reply:
            fields = dict(zip(flat[0::2], flat[1::2], strict=True))
            taken = Taken(_bytes(entry_id), int(nfields), int(size), int(deliveries), fields)
            if _text(kind) == "ok":
                entries.append((taken.entry_id, fields))
            else:
                refused.append(taken)
        await self.process(entries, refused=refused)
        return len(entries) + len(refused)

    def _scoped(self, req: EnqueueRequest) -> EnqueueRequest:
        """``req`` as this stream's producer's (BadEntryError, naming what it may not ask
        for, when its scope does not allow it; enqueue.lua checks again as it writes)."""
        refused = self.scope.refusals(
            account=req.account,
            force=req.force,
            publish=req.publish,
            webhook=req.webhook_url is not None,
        )
        if refused:
            raise BadEntryError(refusal_message(self.scope, refused))
        return dataclasses.replace(req, producer=self.scope)

    async def process(self, entries: Sequence[Entry], *, refused: Sequence[Taken] = ()) -> None:
        """Enqueue ``entries`` and dead-letter the bad ones, and ``refused`` (judged in Redis,
        never read whole), then acknowledge and delete them all at once."""
        if not entries and not refused:
            return
        good: list[tuple[bytes, EnqueueRequest]] = []
        secrets = list(self._secrets())
        dead: list[DeadLetter] = [self._refusal(t, secrets) for t in refused]
        by_id = dict(entries)
        for entry_id, fields in entries:
            try:
                req = parse_entry(
                    fields, max_bytes=self.max_entry_bytes, policy=self.webhook_policy
                )
                # Before the webhook's DNS lookup: a producer that may not give one is told so.
                req = self._scoped(req)
                # The entry's id goes with it: an entry read again (its consumer died before
                # the XACK below) is then a duplicate, even with force 1.
                good.append((entry_id, dataclasses.replace(req, intake_entry=entry_id.decode())))
            except BadEntryError as exc:
                # A reason may quote the value it refuses (a token pasted as an id).
                reason = redact(str(exc), secrets)
                dead.append(DeadLetter(entry_id.decode(), reason, _show(fields, secrets=secrets)))
        hooks = [req.webhook_url for _, req in good if req.webhook_url]
        if hooks:
            verdicts = await check_webhook_urls(hooks, self.webhook_policy, resolve=self._resolve)
            kept = []
            for entry_id, req in good:
                verdict = verdicts.get(req.webhook_url or "")
                if isinstance(verdict, InvalidIdError):
                    shown = _show(by_id[entry_id], secrets=secrets)
                    dead.append(DeadLetter(entry_id.decode(), str(verdict), shown))
                else:
                    kept.append((entry_id, req))
            good = kept
        # The polls must exist before the entries are acknowledged: a crash in between means the
        # entries are read again, and enqueue is idempotent.
        with tracing.enqueue_spans([req for _, req in good], "intake") as (traced, spans):
            outcomes = await self.store.enqueue(traced)
            tracing.note_enqueued(spans, outcomes)
        for (entry_id, _), done in zip(good, outcomes, strict=True):
            if done.outcome == "refused":
                # A carousel's rules (README "Carousels and replies"): the producer's to fix.
                shown = _show(by_id[entry_id], secrets=secrets)
                dead.append(DeadLetter(entry_id.decode(), f"refused: {done.reason}", shown))
        accepted = sum(1 for done in outcomes if done.outcome != "refused")
        ids = [entry_id for entry_id, _ in entries] + [t.entry_id for t in refused]
        # In the intake's order, whichever way each was judged.
        dead.sort(key=lambda d: tuple(int(part) for part in d.entry_id.split("-")))
        async with self.redis.pipeline(transaction=True) as tx:
            for d in dead:
                letter = {
                    "entry_id": d.entry_id,
                    "reason": d.reason,
                    "fields": json.dumps(d.fields, ensure_ascii=False),
                }
                if self.producer_field:
                    letter["producer"] = self.producer_field
                tx.xadd(
                    self.dead,
                    letter,  # type: ignore[arg-type]
                    maxlen=DEAD_LETTERS_MAX_LEN,
                    approximate=True,
                )
            tx.xack(self.stream, INTAKE_GROUP, *ids)
            tx.xdel(self.stream, *ids)
            await tx.execute()
        self.accepted += accepted
        self.dead_lettered += len(dead)
        metrics.observe_intake(accepted=accepted, dead_lettered=len(dead))
        for d in dead:
            log.warning(
                "intake entry dead-lettered: %s",
                d.reason,
                extra={"entry_id": d.entry_id, "producer": self.scope.name},
            )
