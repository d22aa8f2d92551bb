"""What the API tells us, as plain typed values.

Status and error_message are kept verbatim as strings: Meta adds values from time to time and an
enum that raises on a new one would turn a useful answer into a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from api_client.errors import GraphAPIError, ThreadsError
from api_client.platforms import THREADS_EXPLANATIONS, platform_or_default
from api_client.usage import ApiUsage


class ApiStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    FINISHED = "FINISHED"
    PUBLISHED = "PUBLISHED"
    ERROR = "ERROR"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    container_id: str
    status: str
    error_message: str | None = None
    usage: ApiUsage | None = None
    # The error subcode an Instagram ERROR's reason carries (``Platform.reason_code``).
    error_code: int | None = None


class QuotaConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    quota_total: int | None = None
    quota_duration: int | None = None


class PublishingLimit(BaseModel):
    """``GET /{user-id}/threads_publishing_limit``: usage over a moving 24 h per action.

    Every block is optional: without ``fields`` the API returns only ``quota_usage``, and a
    missing block must read as "unknown", not as zero.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    quota_usage: int | None = None
    config: QuotaConfig | None = None
    reply_quota_usage: int | None = None
    reply_config: QuotaConfig | None = None
    delete_quota_usage: int | None = None
    delete_config: QuotaConfig | None = None
    location_search_quota_usage: int | None = None
    location_search_config: QuotaConfig | None = None

    def remaining(self, kind: str = "quota") -> int | None:
        """Posts (``quota``), ``reply``, ``delete`` or ``location_search`` left; None if unknown."""
        usage_name = "quota_usage" if kind == "quota" else f"{kind}_quota_usage"
        config_name = "config" if kind == "quota" else f"{kind}_config"
        usage: int | None = getattr(self, usage_name)
        config: QuotaConfig | None = getattr(self, config_name)
        if usage is None or config is None or config.quota_total is None:
            return None
        return max(0, config.quota_total - usage)


class QuotaSnapshot(BaseModel):
    """A publishing limit as cached in Redis, with when and for whom it was read."""

    user_id: str
    fetched_at: float
    limit: PublishingLimit
    posts_remaining: int | None = Field(default=None)


# Kept for importers: Threads' table lives with the platform now (api_client.platforms).
ERROR_EXPLANATIONS: Mapping[str, str] = THREADS_EXPLANATIONS


def explain_error_message(error_message: str | None, platform: str | None = None) -> str:
    """What a failed container's reason means on its platform ('' when there is none; an
    unknown platform name, from data edited by hand, reads as Threads)."""
    return platform_or_default(platform).explain(error_message)


# The fields the worker reads on GET /{container-id}, on any platform: only media containers
# have them.
CONTAINER_FIELDS = frozenset({"status", "error_message", "status_code"})


def explain_api_error(error: ThreadsError, container_id: str | None = None) -> str | None:
    """Pure: what an API error means for the person who enqueued the id, when it is one we can
    explain; None otherwise (the error's own message is then all there is).

    Code 100 "Tried accessing nonexisting field (status)" on ``GET /{id}?fields=status,
    error_message``: the id names an object without a status, in practice a published post's
    media id given instead of the container (creation) id. The policy still says
    INVALID_REQUEST: asking again cannot help.
    """
    if not isinstance(error, GraphAPIError):
        return None
    field = error.nonexisting_field
    if field is None or field not in CONTAINER_FIELDS:
        return None
    which = f"id {container_id}" if container_id else "this id"
    return (
        f"{which} looks like a published media id, not a media container id: the API has no "
        f"'{field}' field on it (only containers have status and error_message). Enqueue the "
        "id that creating the container returned (POST /{user-id}/threads or /media), not "
        "the one publishing returned"
    )
