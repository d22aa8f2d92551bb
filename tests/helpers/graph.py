"""Raw Graph calls against the simulator, as a client would send them (the simulator's own
tests: tests/integration/test_simulator*.py)."""

from __future__ import annotations

from typing import Any

import aiohttp


async def get_status(
    http: aiohttp.ClientSession,
    base_url: str,
    container_id: str,
    *,
    token: str | None,
    fields: str | None,
) -> tuple[int, Any]:
    """``GET {base_url}/{id}?fields=...&access_token=...``: the HTTP status and the JSON body."""
    params = {}
    if token is not None:
        params["access_token"] = token
    if fields is not None:
        params["fields"] = fields
    async with http.get(f"{base_url}/{container_id}", params=params) as resp:
        return resp.status, await resp.json(content_type=None)
