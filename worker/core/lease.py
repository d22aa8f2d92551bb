"""A run's lease as its worker sees it (pure): when to renew it, and when the run must stop.

A claim gives a run its job's lock for ``LEASE_SECONDS`` (``store/lua/claim.lua``), and the
runner renews every lease it holds every third of that (``store/lua/renew.lua``), so a run keeps
its job for as long as it works while a killed or frozen worker's jobs are due again one short
lease later, whatever ``JOB_TIMEOUT_SECONDS`` is.

The worker counts a lease from the moment it *sent* the claim or renewal: Redis set the lock at
that moment or later, so the worker's end of the lease is never later than Redis' own. A run is
cut off at that end when no renewal pushed it out (Redis away, the process frozen): past it, its
writes would be refused anyway (they are fenced by its token), and its job runs again elsewhere.
"""

from __future__ import annotations

import math

# Renewals per lease: one renewal may fail (a Redis blip, a slow round trip) and the next still
# comes a third of a lease before the end.
RENEWALS_PER_LEASE = 3
# The shortest lease the settings allow (LEASE_SECONDS' lower bound): a renewal every 0.1 s at
# most, as a renewal is one round trip for every job a runner holds, not something to send
# continuously.
MIN_LEASE_SECONDS = 0.3
# Settings.lease_seconds' default: a SIGKILLed worker's checks run again within ~6 s, well
# inside Meta's one-minute check interval.
DEFAULT_LEASE_SECONDS = 6.0


def renew_period(lease_s: float) -> float:
    """How often a runner renews the leases of its running jobs."""
    if lease_s < MIN_LEASE_SECONDS - 1e-9:
        raise ValueError(f"a lease of {lease_s:g} s is shorter than {MIN_LEASE_SECONDS:g} s")
    return lease_s / RENEWALS_PER_LEASE


def next_renewal_in(last_sent: float, now: float, period: float) -> float:
    """Seconds until the next renewal: a period after the last one was sent (not after its
    reply came), at once when that time has passed (a slow reply, a frozen process)."""
    return max(0.0, last_sent + period - now)


def lease_end(sent_at: float, lease_s: float) -> float:
    """The end of a lease granted by a claim or renewal sent at ``sent_at`` (same clock)."""
    return sent_at + lease_s


def cutoff(
    *, due: float | None, lease_ends: float, holding: bool, lost: bool, now: float
) -> float | None:
    """When a run's timer must fire (None: never).

    ``due``: the run's own time limit (its job timeout, or an earlier ``expire``); ``lease_ends``:
    its lease as last renewed; ``holding``: it is recording an answer in hand, which its time
    limit may not interrupt but its lease does (after the lease its writes are refused); ``lost``:
    a renewal found another run's token (or none) in the lock: stop now."""
    if lost:
        return now
    end = lease_ends if holding or due is None else min(due, lease_ends)
    return None if math.isinf(end) else end
