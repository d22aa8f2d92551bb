"""Step strings ("FINISHED", "500", "slow:2:ERROR:UNKNOWN"...) parsed into typed step objects.

A container's script is a list of steps; each status call consumes one. Parsing happens once,
when a script is set, so that a typo fails loudly at configuration time instead of turning into
a confusing reply in the middle of a test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

KNOWN_STATUSES = frozenset({"IN_PROGRESS", "FINISHED", "PUBLISHED", "EXPIRED", "ERROR"})

THAPI = "THApiException"
OAUTH = "OAuthException"
GRAPH_METHOD = "GraphMethodException"

# Placeholder replaced by the requested object's id when an error message is rendered.
OBJECT_ID = "{object_id}"

THROTTLE_MESSAGES: dict[int, str] = {
    4: "Application request limit reached",
    17: "User request limit reached",
    32: "Page request limit reached",
    341: "Application limit reached",
    613: "Calls to this api have exceeded the rate limit.",
    # Instagram's business-use-case rate limit, without its usage header (``buc_throttle``
    # sends the header as well; its 1-minute estimate is too long for most tests).
    80002: "There have been too many calls to this Instagram account. Wait a bit and try again.",
}


class StepError(ValueError):
    """A step string that is not in the vocabulary; the message quotes it."""


@dataclass(frozen=True, slots=True)
class StatusStep:
    """A normal status body: `{"status": ..., "id": ...}` plus `error_message` when set."""

    status: str
    error_message: str | None = None

    @property
    def label(self) -> str:
        if self.error_message is not None:
            return f"ERROR:{self.error_message}"
        if self.status in KNOWN_STATUSES:
            return self.status
        return f"STATUS:{self.status}"


@dataclass(frozen=True, slots=True)
class GraphErrorStep:
    """An HTTP reply carrying the Graph error envelope."""

    label: str
    http_status: int
    code: int
    message: str
    error_type: str = THAPI
    subcode: int | None = None
    is_transient: bool = False
    user_title: str | None = None
    user_msg: str | None = None


@dataclass(frozen=True, slots=True)
class RawStep:
    """A reply whose body is sent verbatim: non-JSON, HTML or JSON of the wrong shape."""

    label: str
    http_status: int
    body: str
    content_type: str


@dataclass(frozen=True, slots=True)
class DropStep:
    """Close the connection without any HTTP reply."""

    label: str = "drop"


@dataclass(frozen=True, slots=True)
class SlowStep:
    """Sleep, then behave like `then`; `then=None` repeats the container's previous status."""

    seconds: float
    then: Step | None = None

    @property
    def label(self) -> str:
        seconds = f"{self.seconds:g}"
        return f"slow:{seconds}" if self.then is None else f"slow:{seconds}:{self.then.label}"


FaultStep = GraphErrorStep | RawStep | DropStep
FinalStep = StatusStep | FaultStep
Step = FinalStep | SlowStep


def graph_error(
    label: str,
    http_status: int,
    code: int,
    message: str,
    *,
    error_type: str = THAPI,
    subcode: int | None = None,
    is_transient: bool = False,
    user_title: str | None = None,
    user_msg: str | None = None,
) -> GraphErrorStep:
    return GraphErrorStep(
        label=label,
        http_status=http_status,
        code=code,
        message=message,
        error_type=error_type,
        subcode=subcode,
        is_transient=is_transient,
        user_title=user_title,
        user_msg=user_msg,
    )


UNKNOWN_ERROR = "An unknown error has occurred."
UNEXPECTED_ERROR = "An unexpected error has occurred. Please retry your request later."

TOKEN_MISSING = graph_error(
    "token_missing",
    400,
    190,
    "An active access token must be used to query information about the current user.",
    error_type=OAUTH,
)
TOKEN_INVALID = graph_error(
    "token_invalid",
    400,
    190,
    "Error validating access token: The session is invalid.",
    error_type=OAUTH,
    subcode=467,
)
TOKEN_EXPIRED = graph_error(
    "token_expired",
    400,
    190,
    "Error validating access token: Session has expired.",
    error_type=OAUTH,
    subcode=463,
)
NOT_FOUND = graph_error(
    "notfound",
    400,
    100,
    f"Unsupported get request. Object with ID '{OBJECT_ID}' does not exist, cannot be loaded "
    "due to missing permissions, or does not support this operation.",
    error_type=GRAPH_METHOD,
    subcode=33,
)
# What Threads answers when publishing a container that is not FINISHED yet (observed).
MEDIA_NOT_READY = graph_error(
    "not_ready",
    400,
    24,
    "The requested resource does not exist",
    subcode=4279009,
    user_title="Media Not Found",
    user_msg=f"The media with id {OBJECT_ID} cannot be found.",
)
# Meta does not document the error for an exhausted post quota; this guess uses the throttling
# code 4 so that a client classifying by `error.code` slows down instead of failing for good.
QUOTA_EXCEEDED = graph_error(
    "quota_exceeded",
    400,
    4,
    "The user has reached the maximum number of published posts",
    subcode=2207042,
    user_title="Posting limit reached",
    user_msg="The user has reached the maximum number of published posts",
)
# The same guess for an exhausted reply quota (1000 replies / 24 h).
REPLY_QUOTA_EXCEEDED = graph_error(
    "reply_quota_exceeded",
    400,
    4,
    "The user has reached the maximum number of published replies",
    subcode=2207042,
    user_title="Reply limit reached",
    user_msg="The user has reached the maximum number of published replies",
)
# Observed at threads_publish although the post went out.
PERMISSION_AFTER_PUBLISH = graph_error(
    "code10_after_publish", 400, 10, "Application does not have permission for this action"
)
# A 200 without the media id: the post may well be out.
NO_ID_REPLY = RawStep("noid_after_publish", 200, '{"success": true}', "application/json")
# What GET /{id}?fields=status,error_message answers when the id is a published post's media id,
# not a container id (reported for Threads; the HTTP status is a guess: code 100 decides).
NONEXISTING_FIELD = graph_error(
    "nonexisting_field", 400, 100, "Tried accessing nonexisting field (status)"
)
SERVER_ERROR = graph_error("500", 500, 1, UNKNOWN_ERROR)
# Instagram's business-use-case throttling (codes 80001-80008; 80002 is Instagram's). The reply
# also carries an X-Business-Use-Case-Usage header, added by the handler (it needs the user id).
BUC_THROTTLE = graph_error(
    "buc_throttle",
    400,
    80002,
    "There have been too many calls to this Instagram account. Wait a bit and try again.",
    error_type=OAUTH,
    is_transient=True,
)
MISSING_CREATION_ID = graph_error(
    "missing_creation_id", 400, 100, "(#100) The parameter creation_id is required"
)

_FIXED: dict[str, Step] = {
    "500": SERVER_ERROR,
    "502": graph_error("502", 502, 2, UNEXPECTED_ERROR, is_transient=True),
    "503": graph_error("503", 503, 2, UNEXPECTED_ERROR, is_transient=True),
    "transient": graph_error("transient", 500, 2, UNEXPECTED_ERROR, is_transient=True),
    "html": RawStep(
        "html",
        502,
        "<!DOCTYPE html><html><head><title>Error</title></head>"
        "<body><h1>502 Bad Gateway</h1><p>Sorry, something went wrong.</p></body></html>",
        "text/html",
    ),
    # Announced as JSON on purpose: a client must not trust the Content-Type.
    "garbage": RawStep("garbage", 200, "<<not json>> \x00\ufffd{", "application/json"),
    "badjson": RawStep("badjson", 200, '{"status": 5}', "application/json"),
    "badjson:array": RawStep("badjson:array", 200, "[1, 2]", "application/json"),
    "empty": RawStep("empty", 200, "{}", "application/json"),
    "throttle": graph_error("throttle", 400, 4, THROTTLE_MESSAGES[4], is_transient=True),
    "429": graph_error("429", 429, 4, THROTTLE_MESSAGES[4], is_transient=True),
    "buc_throttle": BUC_THROTTLE,
    "notfound": NOT_FOUND,
    "nonexisting_field": NONEXISTING_FIELD,
    "permission": graph_error(
        "permission", 403, 10, "Application does not have permission for this action"
    ),
    "token_expired": TOKEN_EXPIRED,
    "token_invalid": TOKEN_INVALID,
    "drop": DropStep(),
}

# The simulator's own inputs are bounded too: a step's text, a script's length, and a slow
# answer's delay (a request held for ever would be a hang, not a fault).
MAX_STEP_CHARS = 256
MAX_SCRIPT_STEPS = 10_000
MAX_SLOW_SECONDS = 3600.0


def _parse_seconds(text: str, raw: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise StepError(f"bad seconds in step {raw[:40]!r}") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SLOW_SECONDS:
        raise StepError(f"seconds must be within [0, {MAX_SLOW_SECONDS:g}] in step {raw[:40]!r}")
    return seconds


def _parse_code(text: str, raw: str) -> int:
    if not text.isdigit():
        raise StepError(f"bad code in step {raw!r}")
    return int(text)


def parse_step(raw: str) -> Step:
    """Parse one step string; the vocabulary is case-sensitive."""
    text = raw.strip()
    if not text:
        raise StepError("empty step")
    if len(text) > MAX_STEP_CHARS:
        raise StepError(f"a step has at most {MAX_STEP_CHARS} characters: {raw[:40]!r}...")
    if text in KNOWN_STATUSES:
        return StatusStep(text)
    fixed = _FIXED.get(text)
    if fixed is not None:
        return fixed
    head, sep, rest = text.partition(":")
    if not sep:
        raise StepError(f"unknown step {raw!r}")
    if head == "ERROR":
        if not rest:
            raise StepError(f"empty error message in step {raw!r}")
        return StatusStep("ERROR", rest)
    if head == "STATUS":
        if not rest:
            raise StepError(f"empty status in step {raw!r}")
        return StatusStep(rest)
    if head == "throttle":
        code = _parse_code(rest, raw)
        if code not in THROTTLE_MESSAGES:
            raise StepError(f"throttle code must be one of {sorted(THROTTLE_MESSAGES)}: {raw!r}")
        return graph_error(
            f"throttle:{code}", 400, code, THROTTLE_MESSAGES[code], is_transient=True
        )
    if head == "perm":
        code = _parse_code(rest, raw)
        if not 200 <= code <= 299:
            raise StepError(f"perm code must be 200-299: {raw!r}")
        return graph_error(f"perm:{code}", 403, code, "Permissions error")
    if head == "slow":
        seconds_text, sep, then = rest.partition(":")
        seconds = _parse_seconds(seconds_text, raw)
        return SlowStep(seconds, parse_step(then) if sep else None)
    raise StepError(f"unknown step {raw!r}")


def parse_steps(raws: Iterable[str | Step]) -> tuple[Step, ...]:
    """Parse a script; an empty script is refused because "the last step repeats" needs one."""
    steps: list[Step] = []
    for raw in raws:
        if len(steps) == MAX_SCRIPT_STEPS:
            raise StepError(f"a script has at most {MAX_SCRIPT_STEPS} steps")
        steps.append(raw if not isinstance(raw, str) else parse_step(raw))
    if not steps:
        raise StepError("a script needs at least one step")
    return tuple(steps)


def parse_step_list(text: str) -> tuple[Step, ...]:
    """Parse the CLI form "STEP,STEP,..."."""
    return parse_steps(part for part in text.split(",") if part.strip())
