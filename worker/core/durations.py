"""Durations as operators type them: ``30s``, ``30m``, ``1h``, ``2d``, ``1h30m``. Pure.

Used by ``GET /v1/failures?since=1h`` and ``threads-poller failures --since 1h``.
"""

from __future__ import annotations

import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The events stream keeps final states for days at most (EVENTS_MAX_LEN): a week is plenty.
MAX_SINCE_SECONDS = 7 * 86400.0
MAX_TEXT = 32

# ASCII digits only: ``\d`` would take any script's digits (int() reads them), which the API's
# document (SINCE_PATTERN, worker.web.requests) does not.
_PART = re.compile(r"([0-9]{1,6})([smhd])")


def parse_duration(text: str, *, max_seconds: float = MAX_SINCE_SECONDS) -> float:
    """Seconds in ``text`` (one or more ``<digits><s|m|h|d>``, largest unit first).

    Raises ValueError with a reason for anything else: no unit, a unit twice, zero, more than
    ``max_seconds``, a sign, spaces inside."""
    value = text.strip().lower()
    if not value:
        raise ValueError("a duration is required, e.g. 30m, 1h or 2d")
    if len(value) > MAX_TEXT:
        raise ValueError(f"duration is longer than {MAX_TEXT} characters")
    parts = _PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(
            f"duration {value[:MAX_TEXT]!r} is not a number with a unit: s, m, h or d "
            "(e.g. 90s, 30m, 1h, 2d, 1h30m)"
        )
    units = [u for _, u in parts]
    order = [UNITS[u] for u in units]
    if len(set(units)) != len(units) or order != sorted(order, reverse=True):
        raise ValueError(f"duration {value!r}: each unit once, largest first (e.g. 1h30m)")
    seconds = sum(int(n) * UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError("duration must be longer than 0")
    if seconds > max_seconds:
        raise ValueError(f"duration {value!r} is longer than {format_duration(max_seconds)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact text ``parse_duration`` reads back (rounded down to a second)."""
    left = int(seconds)
    if left <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, left = divmod(left, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
