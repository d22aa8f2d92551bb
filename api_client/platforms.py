"""What differs between the platforms whose media containers we poll, in one typed description
each. Pure data and pure functions: no I/O.

Threads and Instagram's content publishing share the loop (create a container, check its status
once a minute for at most 5 minutes, publish it once) and the five states. What differs is here
and only here: the status fields and how an error's reason reads, the quota and publish
endpoints, the carousel size, error codes whose meaning differs, the token refresh grant, the
hosts and API versions, and where a deployment's fallback token comes from. The lifecycle, the
planner and the store never branch on a platform's name; they ask its ``Platform``.

Where the real API may differ (Meta's pages, December 2026):

- Instagram's ``status`` is documented as "the error subcode" when ``status_code`` is ERROR; in
  practice it is a sentence (``Error: Media upload has failed with error code 2207026``). We keep
  the sentence and read the subcode out of it (``reason_code``); a bare number also works.
- Instagram's quota is 50 or 100 posts per 24 h depending on which Meta page one reads: we never
  assume one, and read ``config.quota_total`` from ``content_publishing_limit``.
- Instagram Login (``graph.instagram.com``) and Facebook Login (``graph.facebook.com``) serve
  the same container endpoints; set ``INSTAGRAM_API_BASE_URL`` for the latter. Token refresh
  (``ig_refresh_token``) exists for Instagram Login tokens only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class PlatformName(StrEnum):
    THREADS = "threads"
    INSTAGRAM = "instagram"


_DIGITS = re.compile(r"(?<!\d)(\d{4,10})(?!\d)")


@dataclass(frozen=True, slots=True)
class Platform:
    """One platform's wire facts. Frozen: a module-level constant per platform."""

    name: PlatformName
    # The Graph host and version the worker calls by default (a setting overrides it).
    default_base_url: str
    # GET /{container-id}?fields=...: the field holding the state, and the one holding why it
    # failed (Threads: an error_message enum; Instagram: a sentence with the subcode).
    status_field: str
    reason_field: str
    # GET /{user-id}/<quota_edge>?fields=<quota_fields>, and POST /{user-id}/<publish_edge>.
    quota_edge: str
    quota_fields: str
    publish_edge: str
    # Meta: a carousel has 2 to max_children items.
    max_children: int
    # GET /refresh_access_token?grant_type=<refresh_grant> (unversioned, on the same host).
    refresh_grant: str
    # The environment variables of a deployment's fallback token and per-account tokens
    # (<prefix>_<user id>); the tokens file names an account <account_prefix><user id>.
    token_env: str
    account_prefix: str
    # Graph error codes that mean "slow down" on this platform, beyond the shared ones
    # (api_client.policy): Instagram's business-use-case family, 80001-80008.
    throttling_codes: frozenset[int] = frozenset()
    # (code, subcode) pairs whose code reads as throttling but which are not: Instagram's
    # 4/2207051 is a spam restriction; waiting does not lift it.
    not_throttling: frozenset[tuple[int, int]] = frozenset()
    # What a failed container's reason means, for the person who uploaded the media.
    explanations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def status_fields(self) -> str:
        return f"{self.status_field},{self.reason_field}"

    def account_key(self, user_id: str) -> str:
        """The account as every per-account record names it (tokens, throttle, quota, pacing,
        scopes): Threads keeps the bare user id (what every release wrote), Instagram's is
        ``instagram:<id>`` (``instagram`` alone for the deployment's own token), so one id on
        two platforms is two accounts."""
        if not self.account_prefix:
            return user_id
        return self.account_prefix + user_id if user_id else self.account_prefix.rstrip(":")

    def reason_code(self, reason: str | None) -> int | None:
        """The error subcode an ERROR's reason carries (Instagram), else None."""
        if not reason or self.name is not PlatformName.INSTAGRAM:
            return None
        match = _DIGITS.search(reason)
        return int(match.group(1)) if match else None

    def explain(self, reason: str | None) -> str:
        """What a failed container's reason means; '' when there is none."""
        if not reason:
            return ""
        code = self.reason_code(reason)
        key = str(code) if code is not None else reason
        return self.explanations.get(key, "A reason this service does not know; kept verbatim.")


# Meta's documented error_message values, verbatim (including "ASPEC"). UNKNOWN is not a reason,
# so it says what to try instead.
THREADS_EXPLANATIONS: Mapping[str, str] = MappingProxyType(
    {
        "FAILED_DOWNLOADING_VIDEO": "Meta could not download the video from its URL "
        "(URL not public, expired, or too slow).",
        "FAILED_PROCESSING_AUDIO": "The audio track could not be processed.",
        "FAILED_PROCESSING_VIDEO": "The video could not be processed "
        "(codec or container not supported).",
        "INVALID_ASPEC_RATIO": "The video's aspect ratio is outside what Threads accepts.",
        "INVALID_BIT_RATE": "The video's bit rate is outside what Threads accepts.",
        "INVALID_DURATION": "The video is too short or too long for Threads.",
        "INVALID_FRAME_RATE": "The video's frame rate is outside what Threads accepts.",
        "INVALID_AUDIO_CHANNELS": "The audio has a number of channels Threads does not accept.",
        "INVALID_AUDIO_CHANNEL_LAYOUT": "The audio channel layout is not supported.",
        "UNKNOWN": "Meta gave no reason (image failures are reported this way too); check the "
        "media against Threads' media specifications and create a new container.",
    }
)

# Instagram's error subcodes (Meta's "Error Codes" reference), in our words.
INSTAGRAM_EXPLANATIONS: Mapping[str, str] = MappingProxyType(
    {
        "2207001": "Instagram had a server error; create a new container and try again.",
        "2207003": "Downloading the media took too long; try again with a faster host.",
        "2207004": "The image is too large to download (over 8 MiB).",
        "2207005": "The media's format is not supported.",
        "2207006": "The media was not found: the URL may need permissions or have moved.",
        "2207008": "The container does not exist or has expired; create a new one.",
        "2207009": "The aspect ratio is outside what Instagram accepts.",
        "2207010": "The caption is too long (2,200 characters, 30 hashtags, 20 mentions).",
        "2207020": "The container expired before it was published; create a new one.",
        "2207023": "The media type is unknown.",
        "2207026": "The video's format is not supported (codec, container or size).",
        "2207028": "The carousel is invalid (2 to 10 items, every item FINISHED).",
        "2207032": "Instagram could not create the media; create it again.",
        "2207042": "The account reached its daily publishing limit.",
        "2207050": "The account is restricted or inactive; log in to the Instagram app.",
        "2207051": "Instagram restricted the action as possible spam; waiting will not help.",
        "2207052": "The media could not be fetched from its URL.",
        "2207053": "An unknown upload error; create a new container and try again.",
        "2207057": "The thumbnail offset is outside the video's duration.",
    }
)

THREADS = Platform(
    name=PlatformName.THREADS,
    default_base_url="https://graph.threads.net/v1.0",
    status_field="status",
    reason_field="error_message",
    quota_edge="threads_publishing_limit",
    quota_fields=(
        "quota_usage,config,reply_quota_usage,reply_config,delete_quota_usage,delete_config,"
        "location_search_quota_usage,location_search_config"
    ),
    publish_edge="threads_publish",
    max_children=20,
    refresh_grant="th_refresh_token",
    token_env="THREADS_ACCESS_TOKEN",  # noqa: S106 - a variable name, not a token
    account_prefix="",
    explanations=THREADS_EXPLANATIONS,
)

INSTAGRAM = Platform(
    name=PlatformName.INSTAGRAM,
    default_base_url="https://graph.instagram.com/v23.0",
    status_field="status_code",
    reason_field="status",
    quota_edge="content_publishing_limit",
    quota_fields="quota_usage,config",
    publish_edge="media_publish",
    max_children=10,
    refresh_grant="ig_refresh_token",
    token_env="INSTAGRAM_ACCESS_TOKEN",  # noqa: S106 - a variable name, not a token
    account_prefix="instagram:",
    throttling_codes=frozenset(range(80001, 80009)),
    not_throttling=frozenset({(4, 2207051)}),
    explanations=INSTAGRAM_EXPLANATIONS,
)

PLATFORMS: Mapping[str, Platform] = MappingProxyType(
    {p.name.value: p for p in (THREADS, INSTAGRAM)}
)
DEFAULT_PLATFORM = THREADS


def platform_named(name: str | None) -> Platform:
    """The platform a stored or given name means ('' and None: Threads, what every poll before
    Instagram was); ValueError for a name we do not know."""
    if not name:
        return DEFAULT_PLATFORM
    try:
        return PLATFORMS[name]
    except KeyError:
        known = ", ".join(PLATFORMS)
        raise ValueError(f"unknown platform {name[:40]!r}; one of: {known}") from None


def platform_or_default(name: str | None) -> Platform:
    """A stored name's platform, Threads for none or one we do not know (data written before
    Instagram, or edited by hand): readers never fail on it. Doors refuse unknown names
    instead (``platform_named``)."""
    return PLATFORMS.get(name or "", DEFAULT_PLATFORM)


def platform_of_account(account_key: str) -> Platform:
    """The platform an account key belongs to (``Platform.account_key``)."""
    for p in PLATFORMS.values():
        if p.account_prefix and (
            account_key.startswith(p.account_prefix) or account_key == p.account_prefix[:-1]
        ):
            return p
    return DEFAULT_PLATFORM


def user_id_of(account_key: str) -> str:
    """The Graph user id in an account key ('' for a platform's deployment token)."""
    p = platform_of_account(account_key)
    if not p.account_prefix:
        return account_key
    return account_key[len(p.account_prefix) :] if account_key.startswith(p.account_prefix) else ""
