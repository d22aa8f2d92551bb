"""Job data (``arq:job:<id>``): JSON that cannot execute, and the one place that reads or writes it.

arq stores each job as ``{"t": try, "f": function, "a": args, "k": kwargs, "et": enqueue ms}``
and, by default, pickles that dict, so whoever can write ``arq:job:*`` (the ``enqueuer`` and
``worker`` ACL roles) could run code in every worker. Here the same dict is JSON, with a version
(``"v": 1``) and bytes (a webhook's signed body) as ``{"$bytes": "<base64>"}``, so they come
back byte-identical::

    {"v":1,"t":null,"f":"check_container","a":["17890","3f2a9c1b0d4e"],"k":{},"et":1795438388610}

Every job data this service writes is made here (``check_job``, ``delivery_job``, ``encode_job``
for a re-planned job's), and every job data it reads is read here (``decode_job``).

Nothing here ever calls pickle; a value that is not this format (a pickle of an earlier release,
garbage, a known function with arguments of the wrong types) raises ``JobDataError``. arq itself
reads and writes this format when given the same hooks: ``create_pool(...,
job_serializer=job_serializer, job_deserializer=job_deserializer)`` (its ``enqueue_job``), and
``arq.jobs.Job(..., _deserializer=job_deserializer)`` (its ``status()`` and ``info()``).

A job of this service is also named by its id (``<prefix>:check:<container>:<generation>``,
``<prefix>:webhook:<container>:<generation>``): ``job_by_id`` says what such a job is, so a run
whose data is refused or gone runs the job as its id says instead (``worker.store.queue``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from worker.store.keys import Keys

CHECK_FUNCTION = "check_container"
DELIVER_FUNCTION = "deliver_webhook"

FORMAT_VERSION = 1
# Far above any job of ours (a webhook's body is a few hundred bytes): a bound on what is parsed.
MAX_JOB_DATA_BYTES = 1 << 20
MAX_FUNCTION_NAME = 200
BYTES_TAG = "$bytes"
_KEYS = frozenset({"v", "t", "f", "a", "k", "et"})


class JobDataError(ValueError):
    """Job data that is not this module's format (nothing of it was run or unpickled)."""


class JobCall(NamedTuple):
    """What a job runs: its function's name and positional arguments
    (``function, args = decode_job(data)``)."""

    function: str
    args: tuple[Any, ...]


def encode_job(
    function: str,
    args: tuple[Any, ...],
    enqueue_time_ms: int,
    *,
    job_try: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> bytes:
    """The job data of ``function(*args)`` (raises ``JobDataError`` for what JSON cannot hold,
    or arguments of the wrong types for one of this service's functions)."""
    fields = {
        "v": FORMAT_VERSION,
        "t": job_try,
        "f": function,
        "a": list(args),
        "k": dict(kwargs or {}),
        "et": enqueue_time_ms,
    }
    _validate(fields)
    try:
        return json.dumps(
            _to_json(fields), separators=(",", ":"), allow_nan=False, ensure_ascii=False
        ).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobDataError(f"job {function!r} cannot be stored: {exc}") from None


def check_job(container_id: str, generation: str, enqueue_time_ms: int) -> bytes:
    """A poll's check job's data: ``check_container(container, generation)``."""
    return encode_job(CHECK_FUNCTION, (container_id, generation), enqueue_time_ms)


def delivery_job(
    container_id: str, generation: str, body: bytes, url: str | None, enqueue_time_ms: int
) -> bytes:
    """A final state's delivery job's data: ``deliver_webhook(container, generation, signed
    body[, URL])``; without ``url``, the poll's or the default at each attempt."""
    args: tuple[str | bytes, ...] = (container_id, generation, body)
    if url:
        args += (url,)
    return encode_job(DELIVER_FUNCTION, args, enqueue_time_ms)


def decode_job(data: bytes) -> JobCall:
    """The function and arguments in ``data``; ``JobDataError`` when it is not this format."""
    fields = _parse(data)
    return JobCall(fields["f"], tuple(fields["a"]))


def job_serializer(job: dict[str, Any]) -> bytes:
    """arq's ``job_serializer`` hook: arq's job dict (``t f a k et``) -> this format."""
    try:
        function, args, kwargs = job["f"], job["a"], job["k"]
        job_try, enqueue_ms = job.get("t"), job["et"]
    except (KeyError, TypeError):
        raise JobDataError("not an arq job") from None
    return encode_job(
        function, tuple(args), enqueue_ms, job_try=job_try, kwargs=kwargs if kwargs else None
    )


def job_deserializer(data: bytes) -> dict[str, Any]:
    """arq's ``job_deserializer`` hook: this format -> arq's job dict (never unpickles)."""
    fields = _parse(data)
    return {
        "t": fields["t"],
        "f": fields["f"],
        "a": tuple(fields["a"]),
        "k": fields["k"],
        "et": fields["et"],
    }


def job_by_id(keys: Keys, job_id: str) -> JobCall | None:
    """What a job of this service is, by its id alone: a poll's check
    (``check_container(container, generation)``), a final state's delivery
    (``deliver_webhook(container, generation)``: its body is rebuilt from the poll's hash), or
    None for an id that is not one of ours."""
    for prefix, function in (
        (keys.check_job_prefix, CHECK_FUNCTION),
        (keys.webhook_job_prefix, DELIVER_FUNCTION),
    ):
        if job_id.startswith(prefix):
            # As claim.lua splits it: the generation is after the last ':'.
            container_id, _, generation = job_id[len(prefix) :].rpartition(":")
            if container_id and generation:
                return JobCall(function, (container_id, generation))
    return None


# ----- the format ------------------------------------------------------------------------------


def _parse(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise JobDataError(f"job data is a {type(data).__name__}, not bytes")
    raw = bytes(data)
    if len(raw) > MAX_JOB_DATA_BYTES:
        raise JobDataError(f"job data of {len(raw)} bytes (at most {MAX_JOB_DATA_BYTES})")
    if not raw.startswith(b"{"):
        what = "a pickle" if raw.startswith(b"\x80") else "not JSON"
        raise JobDataError(f"job data is {what} (only JSON job data is read)")
    try:
        fields = json.loads(
            raw.decode("utf-8"), object_hook=_from_json, parse_constant=_no_constant
        )
    except JobDataError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JobDataError(f"job data is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(fields, dict):
        raise JobDataError("job data is not a JSON object")
    _validate(fields)
    return fields


def _validate(fields: Mapping[str, Any]) -> None:
    if set(fields) != _KEYS:
        raise JobDataError(f"job data has the fields {sorted(fields)}, not {sorted(_KEYS)}")
    if fields["v"] != FORMAT_VERSION or not _is_int(fields["v"]):
        raise JobDataError(f"job data of version {fields['v']!r} (this worker reads 1)")
    function = fields["f"]
    if not isinstance(function, str) or not 0 < len(function) <= MAX_FUNCTION_NAME:
        raise JobDataError("job data names no function")
    if not isinstance(fields["a"], list) or not isinstance(fields["k"], dict):
        raise JobDataError(f"job {function!r}: its arguments are not a list and an object")
    if not all(isinstance(k, str) for k in fields["k"]):
        raise JobDataError(f"job {function!r}: a keyword argument's name is not a string")
    if not (fields["t"] is None or _is_int(fields["t"])) or not _is_int(fields["et"]):
        raise JobDataError(f"job {function!r}: its try or enqueue time is not an integer")
    want = _SIGNATURES.get(function)
    if want is not None:
        args = fields["a"]
        if fields["k"] or not any(_matches(args, sig) for sig in want):
            got = ", ".join(type(a).__name__ for a in args)
            raise JobDataError(f"job {function!r}: arguments ({got}) are not of its types")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(args: list[Any], types: tuple[type, ...]) -> bool:
    return len(args) == len(types) and all(
        isinstance(a, t) for a, t in zip(args, types, strict=True)
    )


# The argument types of this service's job functions (a job of another name may carry any JSON
# value; the runner runs only the functions it knows).
_SIGNATURES: dict[str, tuple[tuple[type, ...], ...]] = {
    # (container id, generation)
    CHECK_FUNCTION: ((str, str),),
    # (container id, generation[, signed body[, URL]]): without a body, it is rebuilt from the
    # poll's final state (a job re-planned from its id); without a URL, the poll's or the default.
    DELIVER_FUNCTION: ((str, str), (str, str, bytes), (str, str, bytes, str)),
}


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {BYTES_TAG}:
            raise JobDataError(f"an argument {{{BYTES_TAG!r}: ...}} would read back as bytes")
        return {_key(k): _to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise JobDataError(f"a {type(value).__name__} cannot be stored in job data")


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise JobDataError(f"an object key {key!r} is not a string")
    return key


def _from_json(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and BYTES_TAG in obj:
        encoded = obj[BYTES_TAG]
        if not isinstance(encoded, str):
            raise JobDataError("a bytes value is not base64 text")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise JobDataError("a bytes value is not valid base64") from None
    return obj


def _no_constant(name: str) -> Any:
    raise JobDataError(f"job data holds {name}")
