"""What an operator reads and steers: in-flight polls, recent final states, accounts, dead
letters; cancel, replay, discard. Shared by the HTTP API and console (``worker.web``) and the CLI.

Reads are bounded (pages, a scan limit); every write is one Lua script (``lua/cancel.lua``,
``lua/webhook_replay.lua``, ``lua/intake_replay.lua``) or one command, so an operator's action is
atomic with respect to the workers:

- **cancel** makes a live poll final ``CANCELLED`` with its one event (and its webhook delivery,
  when the poll has one), and ends its check job. A run that still holds the job finds the poll
  final and every write of it is refused (``record.lua``, ``publish_claim.lua``), as for a poll
  that ended any other way. A poll whose publish call may be under way is not cancelled.
- **replay** of a webhook dead letter creates its delivery job again (the same delivery id and
  body; the worker signs each attempt with a fresh timestamp); of an intake dead letter, puts its
  original fields back on the intake stream (the intake's rules apply again).
- **discard** deletes a dead letter.

The package: ``views`` (the limits, the outcomes and the views handed out, parsed from what Redis
holds), ``reads`` (``AdminReads``) and ``actions`` (``AdminStore``: the reads and the actions).
The names the rest of the service uses are imported from here.
"""

from __future__ import annotations

from worker.store.admin.actions import AdminStore
from worker.store.admin.reads import AdminReads
from worker.store.admin.views import (
    INFLIGHT_CURSOR_FORM,
    MAX_PAGE,
    MAX_REASON_LENGTH,
    STREAM_ID_FORM,
    AccountView,
    Action,
    Cancelled,
    CancelOutcome,
    DeadLetter,
    DeadLetterKind,
    FinalEvent,
    Found,
    InflightPoll,
    Page,
    Replayed,
    ReplayOutcome,
    validate_stream_id,
)

__all__ = [
    "INFLIGHT_CURSOR_FORM",
    "MAX_PAGE",
    "MAX_REASON_LENGTH",
    "STREAM_ID_FORM",
    "AccountView",
    "Action",
    "AdminReads",
    "AdminStore",
    "CancelOutcome",
    "Cancelled",
    "DeadLetter",
    "DeadLetterKind",
    "FinalEvent",
    "Found",
    "InflightPoll",
    "Page",
    "ReplayOutcome",
    "Replayed",
    "validate_stream_id",
]
