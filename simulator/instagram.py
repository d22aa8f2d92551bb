"""Instagram's content-publishing wire format, as the simulator speaks it beside Threads'.

The same server, port, scripts, faults, tokens and call log serve both platforms: a script belongs
to a container id whatever route polls it, and only the rendering differs. This module holds what
is Instagram's own, as pure functions and constants, so that it can be read (and unit-tested)
without aiohttp or the simulator's state:

- ``GET /v23.0/{container-id}?fields=status_code,status``: ``status_code`` is the script's state;
  ``status`` is a text. Only requested fields come back, plus ``id`` (Graph's default for a
  container is ``id`` alone); an unknown field answers Graph's error 100 "Tried accessing
  nonexisting field (...) on node type (ShadowIGMediaBuilder)".
- ``GET /v23.0/{ig-user-id}/content_publishing_limit?fields=quota_usage,config``: the successful
  Instagram publishes of the user in the last 24 h, plus an admin-set offset; ``config`` carries
  ``quota_total`` (100 unless set through the admin API) and ``quota_duration`` 86400.
- ``POST /v23.0/{ig-user-id}/media_publish?creation_id=...``: Threads' exactly-once rules and
  publish faults, plus Instagram's own refusals (daily limit 9/2207042, spam restriction
  4/2207051, expired container -2/2207020, a carousel of more than 10 children 100/2207028).
- ``buc_throttle`` (a step, so a script, an account override or a random fault): 80002 with an
  ``X-Business-Use-Case-Usage`` header keyed by the user id.
- ``GET /refresh_access_token?grant_type=ig_refresh_token``: Threads' refresh, same knobs.

Where the real API may differ (say so in any test that leans on these):

- The quota: Meta's pages disagree on 50 or 100 posts per 24 h; clients must read
  ``config.quota_total``, which is why the simulator lets a test set it.
- The ``status`` texts other than the ERROR form are what users have reported seeing, not
  documented; only "Error: Media upload has failed with error code <subcode>" is relied upon
  in the wild (clients parse the subcode out of it).
- Real Graph messages for code 100 usually start with "(#100) "; the simulator leaves it out, as
  its Threads side does.
- Publishing a container that is not FINISHED (or publishing twice) answers Threads' observed
  24/4279009 here; the real Instagram API has been reported to answer 9007/2207027 ("Media ID is
  not available") instead. Error ``type`` is OAuthException for every Instagram error (Meta's
  own sample); Threads' THApiException is rendered as OAuthException on Instagram routes.
"""

from __future__ import annotations

from typing import Any

from simulator.steps import OAUTH, THAPI, GraphErrorStep, StatusStep, graph_error

INSTAGRAM_API_PREFIX = "/v23.0"

# Meta's pages disagree (50 or 100 per 24 h); 100 is the default, settable per user.
IG_QUOTA_TOTAL = 100
IG_QUOTA_DURATION = 86400
IG_MAX_CAROUSEL_CHILDREN = 10
IG_REFRESH_GRANT_TYPE = "ig_refresh_token"

# The fields a container (Graph's node type ShadowIGMediaBuilder) answers here.
IG_CONTAINER_FIELDS = frozenset({"id", "status", "status_code"})
IG_CONTAINER_NODE = "ShadowIGMediaBuilder"

# "unknown upload error": Meta's table says a new container is needed.
DEFAULT_ERROR_SUBCODE = 2207053
ERROR_TEXT = "Error: Media upload has failed with error code {subcode}"
STATUS_TEXTS: dict[str, str] = {
    "IN_PROGRESS": "In Progress: Media is still being processed.",
    "FINISHED": "Finished: Media has been uploaded and it is ready to be published.",
    "PUBLISHED": "Published: Media has been successfully published.",
    "EXPIRED": "Expired: Media was not published within 24 hours.",
}

IG_DAILY_LIMIT = graph_error(
    "ig_daily_limit",
    400,
    9,
    "Application request limit reached",
    error_type=OAUTH,
    subcode=2207042,
    user_title="Max. number of posts reached",
    user_msg="You reached the maximum number of posts that is allowed to be published by "
    "Content Publishing API.",
)
IG_SPAM = graph_error(
    "ig_spam",
    400,
    4,
    "Application request limit reached",
    error_type=OAUTH,
    subcode=2207051,
    user_title="Action is blocked",
    user_msg="We restrict certain activity to protect our community. Tell us if you think we "
    "made a mistake.",
)
IG_EXPIRED = graph_error(
    "ig_expired",
    400,
    -2,
    "The media you are trying to access has expired. Please try to upload again.",
    error_type=OAUTH,
    subcode=2207020,
    user_title="Media expired",
    user_msg="The media you are trying to access has expired. Please try to upload again.",
)
IG_CAROUSEL_TOO_MANY = graph_error(
    "ig_carousel_too_many",
    400,
    100,
    "Carousel validation failed",
    error_type=OAUTH,
    subcode=2207028,
    user_title="Carousel validation failed",
    user_msg="Carousels must have at least 2 photos or videos and no more than "
    f"{IG_MAX_CAROUSEL_CHILDREN}.",
)
# The publish faults a test can set on a container (PUT /_sim/publish-faults/{id}).
IG_PUBLISH_FAULTS: dict[str, GraphErrorStep] = {
    step.label: step for step in (IG_DAILY_LIMIT, IG_SPAM, IG_EXPIRED)
}


def status_text(step: StatusStep) -> str:
    """The ``status`` text of a container in ``step``'s state.

    An ERROR's reason is a subcode when it is all digits ("ERROR:2207026"), else the text
    itself; a status outside the five renders as its own name."""
    if step.status == "ERROR":
        reason = step.error_message
        if reason is None:
            return ERROR_TEXT.format(subcode=DEFAULT_ERROR_SUBCODE)
        return ERROR_TEXT.format(subcode=reason) if reason.isdigit() else reason
    return STATUS_TEXTS.get(step.status, step.status)


def unknown_container_field(fields: list[str]) -> str | None:
    """The first requested field a container does not have (Graph names the first one)."""
    for name in fields:
        if name not in IG_CONTAINER_FIELDS:
            return name
    return None


def nonexisting_field(field: str) -> GraphErrorStep:
    return graph_error(
        "nonexisting_field",
        400,
        100,
        f"Tried accessing nonexisting field ({field}) on node type ({IG_CONTAINER_NODE})",
        error_type=OAUTH,
    )


def container_body(step: StatusStep, object_id: str, fields: list[str]) -> dict[str, Any]:
    """Requested fields only, plus ``id`` (all a container answers when nothing is asked)."""
    body: dict[str, Any] = {}
    if "status_code" in fields:
        body["status_code"] = step.status
    if "status" in fields:
        body["status"] = status_text(step)
    body["id"] = object_id
    return body


def quota_body(usage: int, total: int, fields: list[str]) -> dict[str, Any]:
    """``content_publishing_limit``: requested fields of one item (``quota_usage`` by default);
    unknown fields are left out."""
    item: dict[str, Any] = {}
    for name in fields or ["quota_usage"]:
        if name == "quota_usage":
            item[name] = usage
        elif name == "config":
            item[name] = {"quota_total": total, "quota_duration": IG_QUOTA_DURATION}
    return {"data": [item]}


def error_type(graph_type: str) -> str:
    """Instagram answers OAuthException where Threads says THApiException."""
    return OAUTH if graph_type == THAPI else graph_type


def buc_usage(user_id: str, platform: str = "instagram") -> dict[str, Any]:
    """The X-Business-Use-Case-Usage value sent with ``buc_throttle``: the user has spent
    everything and regains access in a minute."""
    return {
        user_id: [
            {
                "type": platform,
                "call_count": 100,
                "total_cputime": 5,
                "total_time": 5,
                "estimated_time_to_regain_access": 1,
            }
        ]
    }
