"""Issue 13: the operator console in a real headless Chromium (Debian's, driven by Playwright),
against ``threads-poller serve`` and a real worker process: log in, watch a container reach
FINISHED live (no reload), replay a dead webhook with its button. Screenshots are saved as test
artefacts in ``test-artifacts/console/`` (``TEST_ARTIFACTS_DIR`` moves them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright
from redis.asyncio import Redis

from bench.harness import Child, free_port, spawn, threads_poller_command
from config import Settings
from simulator import RunningSimulator
from tests.helpers.env import worker_env
from tests.helpers.receivers import webhook_receiver
from tests.helpers.waiting import wait_until
from tests.integration.test_serve import ahttp, serve_env, started
from tests.integration.test_webhooks import SECRET
from tests.web_helpers import RW_KEY

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts")) / "console"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    # A missing browser fails, never skips: scripts/test.sh installs Debian's chromium.
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: run scripts/test.sh (apt-get install chromium)")


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 1400},
        )
        try:
            yield context
        finally:
            await context.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_the_console_live_in_a_browser(
    tmp_path: Path,
    redis: Redis,  # an empty Redis (the fixture flushes it)
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
) -> None:
    settings = settings.model_copy(update={"poll_max_seconds": 30.0})
    env = worker_env(
        project_env,
        settings,
        WEBHOOK_SECRET=SECRET,
        # The receiver is on loopback, which the SSRF guard refuses unless allowed.
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        WEBHOOK_MAX_ATTEMPTS="1",
        WEBHOOK_BACKOFF_SECONDS="0.1",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sim.state.set_script("13401", ["IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    sim.state.set_script("13402", ["ERROR:FAILED_DOWNLOADING_VIDEO"])
    sim.state.set_script("13403", ["FINISHED"])
    children: list[Child] = []
    async with webhook_receiver([500]) as rec:
        try:
            api = spawn(
                "serve",
                [*threads_poller_command(), "serve"],
                tmp_path / "serve.log",
                env=serve_env(env, port),
            )
            children.append(api)
            children.append(
                spawn(
                    "worker",
                    [*threads_poller_command(), "worker"],
                    tmp_path / "worker.log",
                    env=env,
                )
            )
            await started(api, base)
            await _run(tmp_path, base, rec)
        finally:
            for child in children:
                await child.astop(20)


async def _run(tmp_path: Path, base: str, rec: object) -> None:
    from tests.helpers.receivers import Receiver

    assert isinstance(rec, Receiver)
    async with chromium(tmp_path / "profile") as context:
        page = context.pages[0] if context.pages else await context.new_page()
        problems: list[str] = []
        elsewhere: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request",
            lambda r: None if r.url.startswith(base) else elsewhere.append(r.url),
        )

        # Not logged in: the login page; a wrong key is refused, the right one lets in.
        await page.goto(base + "/")
        assert urllib.parse.urlsplit(page.url).path == "/login"
        await page.fill("#key", "not-the-key-of-this-server")
        await page.click("button[type=submit]")
        assert "not one of this server's API keys" in await page.inner_text(".problem")
        problems.clear()  # the refused login's 401 is one
        await page.fill("#key", RW_KEY)
        await page.click("button[type=submit]")
        await page.wait_for_url(base + "/")
        await page.wait_for_selector("#live.on", timeout=10_000)  # the event stream is open
        await page.wait_for_selector("#workers tr[data-worker]", timeout=15_000)
        await shot(page, "01-console")
        loaded_at = await page.evaluate("window.threadsPollerConsole.loadedAt")

        # A container reaches FINISHED while the page is open: it shows up without a reload.
        status, _ = await ahttp(
            "POST", base + "/v1/containers", body={"container_ids": ["13401", "13402"]}
        )
        assert status == 202
        await page.wait_for_selector('#inflight tr[data-container="13401"]', timeout=10_000)
        await shot(page, "02-in-flight")
        await page.wait_for_selector(
            '#finals tr[data-container="13401"][data-status="FINISHED"]', timeout=15_000
        )
        await page.wait_for_selector('#events li[data-container="13401"][data-status="FINISHED"]')
        # Failures first, with the readable reason.
        rows = await page.eval_on_selector_all(
            "#finals tbody tr", "rs => rs.map(r => [r.dataset.container, r.className])"
        )
        assert rows.index(["13402", "failed"]) < rows.index(["13401", "ok"])
        reason = await page.inner_text('#finals tr[data-container="13402"] .reason')
        assert reason.startswith("FAILED_DOWNLOADING_VIDEO: ")
        assert await page.evaluate("window.threadsPollerConsole.loadedAt") == loaded_at
        assert int(await page.get_attribute("#panels", "data-refreshes") or 0) >= 1
        await shot(page, "03-finished-live")

        # A webhook delivery fails for good: its dead letter appears, and Replay sends it again.
        status, _ = await ahttp(
            "POST", base + "/v1/containers", body={"container_id": "13403", "webhook_url": rec.url}
        )
        assert status == 202
        row = "#dead-webhooks tr[data-letter]"
        await page.wait_for_selector(row, timeout=15_000)
        assert "HTTP 500" in await page.inner_text(row)
        await shot(page, "04-dead-letter")
        rec.answers[:] = [200]
        assert await page.evaluate("window.threadsPollerConsole.loadedAt") == loaded_at
        # Replay asks first (what it touches, and why), then says what it did, in its row.
        await page.click(f"{row} button[value^='replay:']")
        await page.wait_for_selector("#targets li")
        await page.fill("#reason", "the receiver is back")
        await page.click("#confirm")
        await page.wait_for_selector('#outcomes tr[data-outcome="replayed"]', timeout=10_000)
        await wait_until(lambda: len(rec.got) == 2, timeout=10)
        await page.goto(base + "/")
        await page.wait_for_selector(row, state="detached", timeout=15_000)
        await shot(page, "05-replayed")
        assert problems == [], problems  # no script error, no CSP violation
        assert elsewhere == [], elsewhere  # nothing fetched from anywhere else
