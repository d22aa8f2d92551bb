"""Logging: one JSON object per line by default (plain text on a terminal), tokens scrubbed.

Scrubbing happens in a filter on the handler, after formatting of the message and any traceback,
so no code path (ours, aiohttp's, another library's) can put a token on the wire by accident.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from api_client.redact import clean, redact
from config import LogFormat

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# In a container the host name is the container id: it tells replicas apart in a log store that
# merges their streams (Docker's json-file driver does not add it to the line).
_HOST = socket.gethostname()


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = list(self._secrets())
        message = record.getMessage()
        record.msg = message
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
            record.exc_info = None
        extras = [
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD and isinstance(value, str)
        ]
        # Most lines hold nothing to scrub (a final state's line: ids, a status, numbers): one
        # look at all of their text at once, instead of ``redact`` on each part. Exact: a part
        # that holds a secret or a pattern's key word makes the joined text hold it too (the
        # key words are ASCII, whose lower case is the same wherever a character stands).
        if clean(message + "\n" + "\n".join(value for _, value in extras), secrets):
            return True
        record.msg = redact(message, secrets)
        for key, value in extras:
            setattr(record, key, redact(value, secrets))
        return True


# One encoder for every line (``json.dumps`` with options builds one per call).
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The last whole second formatted: a busy worker writes many lines a second.
        self._second = -1
        self._second_text = ""

    def _time(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            self._second = second
        return f"{self._second_text}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": self._time(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "host": _HOST,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_text:
            data["exc"] = record.exc_text
        return _JSON.encode(data)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class AbandonedLookupFilter(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" for a failed DNS lookup.

    uvloop reports that for a lookup whose waiter was cancelled: with Redis' host gone, every
    bounded wait of a stop (worker.runtime.app) abandons one, and the error line says nothing
    the worker's own "Redis did not answer" line does not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Future exception was never retrieved")
            and record.exc_info is not None
            and isinstance(record.exc_info[1], socket.gaierror)
        )


def setup_logging(
    fmt: LogFormat, level: str, secrets: Callable[[], Iterable[str]] = lambda: ()
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == LogFormat.JSON or (fmt == LogFormat.AUTO and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is noisy at INFO on a busy server.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio_log = logging.getLogger("asyncio")
    for stale in [f for f in asyncio_log.filters if isinstance(f, AbandonedLookupFilter)]:
        asyncio_log.removeFilter(stale)
    asyncio_log.addFilter(AbandonedLookupFilter())
