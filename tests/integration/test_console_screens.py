"""Issue 23: the console as an operator uses it, in Debian's headless Chromium (Playwright), at
390 and 1280 px, light and dark, with a read-write and a read-only key, against a real
``threads-poller serve`` on its own redis-server: find a container by id with the search box,
open its page, filter failures by account, cancel and poll again in bulk with a confirmation and
a reason (stored with the key's name), replay dead letters, no horizontal scroll at 390 px, no
write control for a read-only key, live updates that move nothing under the operator, and Redis
stopped midway (the HTML 503 page), then started again. Screenshots: test-artifacts/console/.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright
from redis.asyncio import Redis

from bench.harness import RedisServer, free_port, spawn, threads_poller_command
from tests.integration.test_console_browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.integration.test_serve import ahttp, serve_env, started
from tests.web_helpers import RO_KEY, RW_KEY
from worker.store.keys import Keys
from worker.web.access import KeyRing

SCREENS = [(390, "light"), (390, "dark"), (1280, "light"), (1280, "dark")]


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def login(browser: Browser, base: str, key: str, width: int, scheme: str) -> Page:
    context = await browser.new_context(
        viewport={"width": width, "height": 900},
        color_scheme=scheme,  # type: ignore[arg-type]
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and "503" not in m.text and "ERR_CONNECTION" not in m.text
            else None
        ),
    )
    page.problems = problems  # type: ignore[attr-defined]
    await page.goto(base + "/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")
    return page


async def no_sideways_scroll(page: Page, width: int) -> None:
    wide = await page.evaluate("document.documentElement.scrollWidth")
    assert wide <= width, (page.url, wide)


async def test_the_console_on_any_screen(
    tmp_path: Path, project_env: dict[str, str], redis: Redis
) -> None:
    server = await RedisServer(tmp_path / "redis", appendonly=True).astart()
    db = Redis.from_url(server.url)
    prefix = project_env.get("KEY_PREFIX", "threads-poller")
    keys = Keys(prefix)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = serve_env(dict(project_env, REDIS_URL=server.url), port)
    api = spawn("serve", [*threads_poller_command(), "serve"], tmp_path / "serve.log", env=env)
    rw_name = f"key {KeyRing.build([RW_KEY]).keys[0].fingerprint}"
    try:
        await started(api, base)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            try:
                for n, (width, scheme) in enumerate(SCREENS):
                    await _operator(browser, base, db, keys, n, width, scheme, rw_name)
                    await _read_only(browser, base, n, width, scheme)
                await _redis_stops(browser, base, server)
            finally:
                await browser.close()
    finally:
        await api.astop(20)
        await db.aclose()
        await server.astop()


async def _operator(
    browser: Browser,
    base: str,
    db: Redis,
    keys: Keys,
    n: int,
    width: int,
    scheme: str,
    rw_name: str,
) -> None:
    tag = f"{width}-{scheme}"
    account = f"77{n}"
    ids = [f"2399{n}{i}" for i in range(1, 5)]
    other = f"2398{n}1"
    status, _ = await ahttp(
        "POST", base + "/v1/containers", body={"container_ids": ids, "account": account}
    )
    assert status == 202
    status, _ = await ahttp(
        "POST", base + "/v1/containers", body={"container_id": other, "account": "999"}
    )
    assert status == 202
    for i in range(3):
        await db.xadd(
            keys.dead_letters,
            {
                "entry_id": f"1-{i}",
                "reason": "no container_id",
                "fields": json.dumps({"id": f"{n}{i}"}),
            },
        )
    page = await login(browser, base, RW_KEY, width, scheme)
    await no_sideways_scroll(page, width)
    if scheme == "dark":
        bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(21, 23, 26)", bg
    else:
        bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(247, 247, 245)", bg
    # The header names the service once; a skip link is the first thing the keyboard reaches.
    assert (await page.inner_text(".brand")).strip() == "threads-poller"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    # The chart: axes, times, units, a legend; its text readable at this width.
    assert await page.locator(".chart text.unit").count() == 2
    assert await page.locator(".legend .sw").count() == 4
    tick_px = await page.evaluate(
        "Math.min(...[...document.querySelectorAll('.chart text')]"
        ".map(t => t.getBoundingClientRect().height))"
    )
    assert tick_px >= 9, tick_px
    await shot(page, f"10-overview-{tag}")

    # Find a container by id with the search box: its page, every field, the timeline.
    await page.fill("#q", ids[0])
    await page.press("#q", "Enter")
    await page.wait_for_url(f"{base}/containers/{ids[0]}")
    assert await page.inner_text("#status") == "QUEUED"
    assert "account" in await page.inner_text("#fields")
    # Its timeline: the poll's start, from the history the enqueue wrote.
    assert "poll started" in await page.inner_text("#timeline")
    await no_sideways_scroll(page, width)
    await shot(page, f"11-container-{tag}")
    # A prefix lists the ids that start with it.
    await page.fill("#q", ids[0][:-1])
    await page.press("#q", "Enter")
    await page.wait_for_selector("#found")
    found = await page.eval_on_selector_all("#found a", "as => as.map(a => a.textContent)")
    assert set(ids) <= set(found) and other not in found

    # In flight, this account: select two, cancel them with a reason.
    await page.goto(f"{base}/containers?status=inflight&account={account}")
    await no_sideways_scroll(page, width)
    rows = await page.eval_on_selector_all("#rows tbody tr", "rs => rs.map(r => r.dataset.key)")
    assert sorted(rows) == sorted(ids)
    # A live update changes nothing under the operator: focus and selection stay.
    box = f'#rows tr[data-key="{ids[0]}"] input[type=checkbox]'
    await page.check(box)
    await page.check(f'#rows tr[data-key="{ids[1]}"] input[type=checkbox]')
    await page.focus(box)
    status, _ = await ahttp("POST", f"{base}/v1/containers/{ids[3]}/cancel", body={})
    assert status == 200
    await page.evaluate("window.threadsPollerConsole.refresh()")
    await page.wait_for_selector("body[data-refreshes]", state="attached")
    assert await page.evaluate(f"document.activeElement === document.querySelector('{box}')"), (
        "focus moved"
    )
    assert await page.is_checked(box)
    # The cancelled row left the list: dimmed in place, not removed, while focus is in it.
    assert await page.get_attribute(f'#rows tr[data-key="{ids[3]}"]', "class") == "live stale"
    await shot(page, f"12-inflight-{tag}")
    await page.click("#rows-form button[name=action][value=cancel]:not([formaction])")
    await page.wait_for_url(base + "/console/confirm")
    listed = await page.eval_on_selector_all("#targets code", "cs => cs.map(c => c.textContent)")
    assert sorted(listed) == sorted(ids[:2])
    await no_sideways_scroll(page, width)
    await shot(page, f"13-confirm-cancel-{tag}")
    await page.fill("#reason", f"wrong upload {tag}")
    await page.click("#confirm")
    await page.wait_for_url(base + "/console/act")
    outcomes = await page.eval_on_selector_all(
        "#outcomes tbody tr", "rs => rs.map(r => [r.dataset.key, r.dataset.outcome])"
    )
    assert sorted(outcomes) == [[ids[0], "cancelled"], [ids[1], "cancelled"]]
    await no_sideways_scroll(page, width)
    await shot(page, f"14-cancelled-{tag}")
    for cid in ids[:2]:
        last = (await db.hget(keys.result(cid), "last_error") or b"").decode()  # type: ignore[misc]
        assert last == f"cancelled by {rw_name}: wrong upload {tag}", last

    # Failures of this account: the three cancelled (not the other account's).
    await page.goto(base + "/containers")
    await page.select_option("#f-status", "failures")
    await page.fill("#f-account", account)
    await page.click(".filters button[type=submit]")
    await page.wait_for_selector("#rows tbody tr[data-key]")
    shown = await page.eval_on_selector_all("#rows tbody tr", "rs => rs.map(r => r.dataset.key)")
    assert sorted(shown) == sorted([ids[0], ids[1], ids[3]])
    await no_sideways_scroll(page, width)
    await shot(page, f"15-failures-{tag}")
    # Poll again everything this filter shows.
    await page.click("#poll-all")
    listed = await page.eval_on_selector_all("#targets code", "cs => cs.map(c => c.textContent)")
    assert sorted(listed) == sorted(shown)
    await page.fill("#reason", "retry after the fix")
    await page.click("#confirm")
    await page.wait_for_selector("#outcomes")
    assert await page.locator("#outcomes tr.ok").count() == 3
    for cid in shown:
        assert (await db.hget(keys.result(cid), "status")) == b"QUEUED"  # type: ignore[misc]
    audit = [fields for _, fields in await db.xrange(keys.audit)]
    polls = [a for a in audit if a[b"action"] == b"poll" and a[b"target"].decode() in shown]
    assert len(polls) == 3
    assert {a[b"reason"] for a in polls} == {b"retry after the fix"}
    assert {a[b"actor"] for a in polls} == {rw_name.encode()}

    # Replay the dead letters: every intake one, with a confirmation.
    before = await db.xlen(keys.intake)
    await page.goto(base + "/#dead-letters")
    await page.click("#dead-intake-form button[name=scope]")
    count = await page.locator("#targets li").count()
    assert count == 3
    await page.fill("#reason", "the producer is fixed")
    await page.click("#confirm")
    await page.wait_for_selector("#outcomes")
    assert await page.locator('#outcomes tr[data-outcome="replayed"]').count() == 3
    assert await db.xlen(keys.intake) == before + 3
    assert await db.xlen(keys.dead_letters) == 0
    await shot(page, f"16-replayed-{tag}")
    assert page.problems == [], page.problems  # type: ignore[attr-defined]
    await page.context.close()


async def _read_only(browser: Browser, base: str, n: int, width: int, scheme: str) -> None:
    page = await login(browser, base, RO_KEY, width, scheme)
    ids = [f"2399{n}{i}" for i in range(1, 5)]
    for path in ("/", "/containers?status=inflight", f"/containers/{ids[0]}"):
        await page.goto(base + path)
        await no_sideways_scroll(page, width)
        controls = await page.locator(
            "input[type=checkbox], form[action^='/console'], button.danger"
        ).count()
        assert controls == 0, (path, controls)
        assert await page.locator(".ro").count() == 1
    await shot(page, f"17-read-only-{width}-{scheme}")
    assert page.problems == [], page.problems  # type: ignore[attr-defined]
    await page.context.close()


async def _redis_stops(browser: Browser, base: str, server: RedisServer) -> None:
    page = await login(browser, base, RW_KEY, 390, "light")
    await server.astop()
    try:
        answer = await page.goto(base + "/containers")
        assert answer is not None and answer.status == 503
        assert "Redis is unreachable" in await page.inner_text("h1")
        await no_sideways_scroll(page, 390)
        await shot(page, "18-redis-down-390")
        # An API client still gets JSON.
        status, body = await ahttp("GET", base + "/v1/inflight")
        assert status == 503 and body["error"]["code"] == "redis_unavailable"
    finally:
        await server.astart()
    answer = await page.goto(base + "/containers")
    assert answer is not None and answer.status == 200
    assert urllib.parse.urlsplit(page.url).path == "/containers"
    await page.context.close()
