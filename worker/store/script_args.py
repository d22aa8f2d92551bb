"""The named arguments of the Lua scripts that take more than a few (``worker/store/lua``).

Such a script takes ONE table, ``ARGV[1]``: a JSON object that it reads with Redis' built-in
``cjson.decode`` (``local args = cjson.decode(ARGV[1])``), then ``args.container_id`` rather
than ``ARGV[1]``, ``args.platform`` rather than ``ARGV[27]``. Why: counting two dozen positions
is how a misaligned argument slips in, silently (a flag read as the webhook URL). A field
whose name the script and its caller spell differently is ``nil`` in Lua, and fails loudly in
the tests of the script. Field/value pairs of any number (the hash fields a record writes, the
event's, a dead letter's) stay variadic after the table (``ARGV[2..]``).

Each script's table is a frozen dataclass here: its field names are the names the script reads
(declared once, here; ``to_json`` spells no name of its own). Every value goes to Lua as the
string Redis would have handed the script as an ``ARGV`` (an int as its digits, ``'1'`` /
``'0'`` for flags, ``''`` for none), so a script reads each field exactly as it read its
positional argument: no ``cjson.null``, no Lua number where a string was. Job data is the one
exception: bytes, which JSON cannot carry byte for byte (an earlier release's pickle, say, which
a worker then refuses and rewrites: ``worker.store.queue``), so a ``bytes`` field goes beside the
table as ``ARGV[2]`` (``argv()``), and the variadic pairs after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import ClassVar


def flag(value: bool) -> str:
    """A flag as the scripts read it."""
    return "1" if value else "0"


# Each table's field names, read once (``dataclasses.fields`` is slow for a call per check):
# those in the JSON object, and the one of bytes (job data) that goes beside it, if any.
_NAMES: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _names(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = _NAMES.get(cls)
    if names is None:
        table = tuple(f.name for f in fields(cls) if f.type not in ("bytes", bytes))
        blobs = tuple(f.name for f in fields(cls) if f.type in ("bytes", bytes))
        if len(blobs) > 1:
            raise TypeError(f"{cls.__name__}: at most one bytes field (ARGV[2])")
        names = _NAMES[cls] = (table, blobs)
    return names


def _lua(value: str | int) -> str:
    return value if isinstance(value, str) else str(value)


class ScriptTable:
    """A script's named arguments: ``to_json()`` is its ``ARGV[1]``."""

    __slots__ = ()
    # The script that reads the table (for readers; worker/store/lua/<script>).
    script: ClassVar[str]

    def to_json(self) -> str:
        """The table (``ARGV[1]``): every field but the bytes one."""
        table, _ = _names(type(self))
        return json.dumps(
            {name: _lua(getattr(self, name)) for name in table},
            ensure_ascii=False,
            separators=(",", ":"),
        )

    def argv(self) -> list[str | bytes]:
        """The script's fixed arguments: the table, then the bytes field (``ARGV[2]``) if any."""
        _, blobs = _names(type(self))
        return [self.to_json(), *(getattr(self, name) for name in blobs)]


@dataclass(frozen=True, slots=True)
class EnqueueArgs(ScriptTable):
    """``enqueue.lua``: record a container and schedule its first check."""

    script: ClassVar[str] = "enqueue.lua"

    container_id: str
    window_ms: int
    ttl_seconds: int
    generation: str
    # "<prefix>:check:<id>:": the job id without its generation (the live job's, the new one's).
    job_id_base: str
    job_data: bytes  # ARGV[2]
    account: str
    force: str  # '1' / '0'
    publish: str  # '1' / '0'
    webhook_url: str  # '' for none
    pace_step_ms: int  # 0: no pacing (the workers' published step wins)
    intake_entry: str  # '' when not from the intake
    reply_to: str  # '' for none
    parent_id: str  # a carousel child's parent ('' for none)
    parent_generation: str  # the parent's new generation ('' for none)
    children: str  # a carousel parent's children, "A,B,..." ('' for none)
    children_count: int
    # The producer's scope (config/producers.py), enforced in the same step as the write.
    producer: str  # 'default' for the implicit one
    producer_force: str  # '1' / '0': it may force
    producer_publish: str  # '1' / '0': it may publish
    producer_webhook: str  # '1' / '0': it may give a webhook URL
    producer_accounts: str  # '*', or ',id,id,'
    traceparent: str  # the poll's W3C traceparent ('' for none)
    platform: str  # 'threads' / 'instagram' (api_client.platforms)
    result_prefix: str  # "<prefix>:result:" (Keys: a child's, a live carousel's hash)


@dataclass(frozen=True, slots=True)
class RecordArgs(ScriptTable):
    """``record.lua``: one run's outcome (then the hash's and the event's field/value pairs,
    after ``webhook_job_data``)."""

    script: ClassVar[str] = "record.lua"

    token: str  # the run's token (its lock holds it while the run owns the job)
    generation: str
    job_id: str
    final: str  # '1' / '0'
    want_ms: int  # the next run wanted at (ms, Redis time)
    pace_step_ms: int  # 0: none
    ttl_seconds: int
    events_max_len: int
    container_id: str
    webhook_job_id: str  # '' for none
    webhook_job_data: bytes  # ARGV[2] (b'' for none)
    fields_count: int  # how many hash field/value pairs follow (from ARGV[3])
    status: str  # this record's status
    error_message: str
    waiting_parent: str  # '1' when this run planned a carousel parent still waiting
    history: str  # this record's history entries, newline-separated ('' for none)
    # Keys' prefixes, for the keys of a carousel child's parent (the one its hash names).
    result_prefix: str  # "<prefix>:result:"
    history_prefix: str  # "<prefix>:history:"
    check_prefix: str  # "<prefix>:check:"


@dataclass(frozen=True, slots=True)
class ClaimArgs(ScriptTable):
    """``claim.lua``: claim due jobs (then the ids of candidates that cannot be declared)."""

    script: ClassVar[str] = "claim.lua"

    limit: int  # most jobs to claim
    lease_ms: int
    worker: str
    job_prefix: str  # the jobs' data keys' prefix
    lock_prefix: str
    tries_prefix: str
    check_prefix: str  # "<prefix>:check:"
    result_prefix: str  # "<prefix>:result:"
    job_ttl_ms: int
    webhook_prefix: str  # "<prefix>:webhook:"
    queue: str  # which queue KEYS[1] is: 'checks' or 'deliveries'
    candidates: int  # how many candidates the reply names (the next claim's keys)
    candidates_when_left: int  # how many when due jobs were left for want of their keys
    account_prefix: str  # "<prefix>:account:"


@dataclass(frozen=True, slots=True)
class CancelArgs(ScriptTable):
    """``cancel.lua``: make a live poll final CANCELLED."""

    script: ClassVar[str] = "cancel.lua"

    container_id: str
    generation: str  # the poll the caller read (another one: 'changed')
    job_id_base: str  # "<prefix>:check:<id>:"
    last_error: str
    ttl_seconds: int
    events_max_len: int
    webhook_job_id: str  # '' for none
    webhook_job_data: bytes  # ARGV[2] (b'' for none)
    stats_prefix: str  # "<prefix>:stats:"
    stats_ttl_seconds: int
    history: str  # the cancel's history entry ("x|reason")
    # Keys' prefixes, for the keys of a carousel child's parent (the one its hash names).
    result_prefix: str  # "<prefix>:result:"
    check_prefix: str  # "<prefix>:check:"


@dataclass(frozen=True, slots=True)
class WebhookSettleArgs(ScriptTable):
    """``webhook_settle.lua``: one delivery attempt (then a dead letter's field/value pairs)."""

    script: ClassVar[str] = "webhook_settle.lua"

    token: str
    job_id: str
    generation: str
    outcome: str  # 'delivered' / 'retry' / 'dead'
    attempt: int
    delay_ms: int  # the retry's delay
    reason: str  # '' when delivered
    job_ttl_ms: int
    dead_letters_max_len: int
    history: str  # the attempt's history entry ("h|fields")


@dataclass(frozen=True, slots=True)
class IntakeTakeArgs(ScriptTable):
    """``intake_take.lua``: read new intake entries, or claim stale ones, judged inside Redis
    (worker/runtime/intake.py)."""

    script: ClassVar[str] = "intake_take.lua"

    group: str  # the consumer group
    consumer: str  # this worker's consumer name
    mode: str  # 'new' (XREADGROUP) / 'claim' (XAUTOCLAIM)
    count: int  # entries read or claimed at most
    max_bytes: int  # an entry's size (names and values) at most, to be returned whole
    max_fields: int  # an entry's fields at most, to be returned whole
    max_deliveries: int  # deliveries of an entry at most before it is poison (no fields)
    claim_idle_ms: int  # how long an entry stays pending before 'claim' takes it over
