"""Graph API usage headers: how close the app (or the business use case) is to being throttled.

Meta documents ``X-App-Usage`` (``{"call_count": 28, "total_time": 25, "total_cputime": 25}``,
percentages) and ``X-Business-Use-Case-Usage`` (``{"<id>": [{"type": ..., "call_count": ...,
"estimated_time_to_regain_access": <minutes>}]}``) for the Graph API in general; whether Threads
sends them is unknown, so everything here is optional and a malformed header is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

USAGE_HEADERS = ("X-App-Usage", "X-Business-Use-Case-Usage", "X-Ad-Account-Usage")
_PERCENT_FIELDS = ("call_count", "total_time", "total_cputime", "acc_id_util_pct")


@dataclass(frozen=True, slots=True)
class ApiUsage:
    max_percent: float  # the highest usage figure reported, 0-100+
    regain_seconds: float  # Meta's estimate of when access comes back; 0 if none given


def _numbers(block: Mapping[str, Any]) -> Iterator[float]:
    for name in _PERCENT_FIELDS:
        value = block.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield float(value)


def parse_usage_headers(headers: Mapping[str, str]) -> ApiUsage | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    percents: list[float] = []
    regain = 0.0
    for name in USAGE_HEADERS:
        raw = lowered.get(name.lower())
        if not raw:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        blocks: list[Mapping[str, Any]] = []
        if isinstance(data, dict) and any(k in data for k in _PERCENT_FIELDS):
            blocks.append(data)
        elif isinstance(data, dict):
            for entries in data.values():
                if isinstance(entries, list):
                    blocks += [e for e in entries if isinstance(e, dict)]
                elif isinstance(entries, dict):
                    blocks.append(entries)
        for block in blocks:
            percents += list(_numbers(block))
            minutes = block.get("estimated_time_to_regain_access")
            if isinstance(minutes, int | float) and not isinstance(minutes, bool):
                regain = max(regain, float(minutes) * 60)
    if not percents and not regain:
        return None
    return ApiUsage(max(percents, default=0.0), regain)
