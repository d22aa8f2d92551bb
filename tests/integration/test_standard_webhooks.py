"""Issue 24: real deliveries (the worker, the simulator, a loopback receiver) verified as
receivers verify them: with the maintained Standard Webhooks libraries of Python (PyPI
``standardwebhooks``) and Node (npm ``standardwebhooks``, under Debian's nodejs, installed by
``npm ci`` from tests/js/package-lock.json). Through a secret rotation, and a replayed dead
letter. The signing functions alone, against the published test vector: tests/unit/test_signing.py.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from config import Settings
from config.webhook_keys import SignatureScheme
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.env import worker_env
from tests.helpers.receivers import Receiver, webhook_receiver
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_webhooks import hook_settings
from tests.webhook_verify import verified, verifies
from worker import enqueue, get_result
from worker.jobs.webhook import SIGNATURE_HEADER, verify_signature
from worker.store.keys import Keys

JS_DIR = Path(__file__).resolve().parents[1] / "js"
# The rotation's two secrets: the new one in the Standard Webhooks form, the old one any text
# (a secret from before this scheme: it keeps signing, as its raw bytes).
NEW = "whsec_" + base64.b64encode(b"the-new-key-of-32-random-bytes!!").decode()
OLD = "an-old-secret-from-before-0123456789"
STANDARD = ("webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True)
class NodeResult:
    ok: bool
    error: str | None
    data: Any


def node_packages() -> None:
    """tests/js/node_modules as its lock says (scripts/bootstrap.sh ensure_node_packages does
    the same before the suite; this covers a bare ``pytest``). Missing Node fails, never skips."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is not installed: run scripts/test.sh (apt-get install nodejs npm)"
            )
    marker = JS_DIR / "node_modules" / ".package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= (JS_DIR / "package-lock.json").stat().st_mtime:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        check=True,
        capture_output=True,
        timeout=300,
    )


def node_verify(cases: list[tuple[str, bytes, Mapping[str, str]]]) -> list[NodeResult]:
    """Each (secret, body, headers) verified by the npm library, in one Node process."""
    node_packages()
    payload = [
        {"secret": s, "body_base64": base64.b64encode(b).decode(), "headers": dict(h)}
        for s, b, h in cases
    ]
    done = subprocess.run(
        ["node", str(JS_DIR / "verify.js")],
        input=json.dumps(payload).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [NodeResult(**r) for r in json.loads(done.stdout)]


async def _delivered(redis: Redis, settings: Settings, cid: str) -> bool:
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.webhook_status == "delivered"


async def _deliver_one(
    redis: Redis, settings: Settings, sim: RunningSimulator, rec: Receiver, cid: str
) -> tuple[bytes, dict[str, str]]:
    before = len(rec.got)
    sim.state.set_script(cid, ["FINISHED"])
    await enqueue(redis, cid, webhook_url=rec.url, settings=settings)
    async with running_worker(settings):
        await wait_until(lambda: _delivered(redis, settings, cid), timeout=15)
    assert len(rec.got) == before + 1
    return rec.got[-1]


def _standard_only(headers: Mapping[str, str]) -> dict[str, str]:
    """What a receiver reads: the three headers, whatever the case aiohttp gave them."""
    lower = {k.lower(): v for k, v in headers.items()}
    return {name: lower[name] for name in STANDARD}


async def test_a_secret_rotation_verified_by_the_python_and_node_libraries(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """The README's procedure: OLD alone; then NEW and OLD together while the receiver moves
    to NEW (either one verifies, in both languages); then NEW alone (OLD no longer does)."""
    base = hook_settings(settings)
    async with webhook_receiver([200]) as rec:
        before = await _deliver_one(
            redis, base.model_copy(update={"webhook_secret": SecretStr(OLD)}), sim, rec, "24001"
        )
        during = await _deliver_one(
            redis,
            base.model_copy(update={"webhook_secret": SecretStr(f"{NEW}, {OLD}")}),
            sim,
            rec,
            "24002",
        )
        after = await _deliver_one(
            redis, base.model_copy(update={"webhook_secret": SecretStr(NEW)}), sim, rec, "24003"
        )
    for body, headers in (before, during, after):
        # Standard headers only, by default; the delivery id is the webhook-id.
        assert SIGNATURE_HEADER not in headers
        std = _standard_only(headers)
        assert std["webhook-id"] == headers["X-Threads-Poller-Delivery"]
        assert std["webhook-id"] == json.loads(body)["delivery_id"]
        assert "." not in std["webhook-id"]
    assert len(during[1]["webhook-signature"].split(" ")) == 2
    assert len(after[1]["webhook-signature"].split(" ")) == 1

    expected = [
        (before, OLD, True),
        (before, NEW, False),
        (during, NEW, True),  # the receiver that already moved to the new secret
        (during, OLD, True),  # the receiver that has not yet
        (after, NEW, True),
        (after, OLD, False),  # the old secret is retired
    ]
    for (body, headers), secret, ok in expected:
        assert verifies(secret, body, _standard_only(headers)) is ok, (secret, ok)
    during_data = verified(NEW, during[0], during[1])
    assert (during_data["container_id"], during_data["status"]) == ("24002", "FINISHED")

    results = node_verify([(s, b, _standard_only(h)) for (b, h), s, _ in expected])
    assert [r.ok for r in results] == [ok for _, _, ok in expected], results
    assert all(
        r.error == "WebhookVerificationError: No matching signature found"
        for r in results
        if not r.ok
    )
    assert results[2].data["container_id"] == "24002"  # the library parsed the verified body
    # A tampered body fails in Node as in Python.
    body, headers = during
    (tampered,) = node_verify([(NEW, body.replace(b"FINISHED", b"EXPIRED!"), headers)])
    assert not tampered.ok and not verifies(NEW, body.replace(b"FINISHED", b"EXPIRED!"), headers)


async def test_a_replayed_dead_letter_verifies_with_the_same_id(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    project_env: dict[str, str],
) -> None:
    """A delivery dead-lettered, then replayed by an operator (the CLI): the replay is signed
    afresh (its own timestamp, within the libraries' tolerance) under the same webhook-id, the
    receiver's idempotency key (the specification: the id stays "the same when the same webhook
    is being resent")."""
    settings = hook_settings(
        settings,
        webhook_secret=SecretStr(f"{NEW} {OLD}"),
        webhook_backoff_seconds=None,
        webhook_max_attempts=1,
    )
    sim.state.set_script("24011", ["EXPIRED"])
    async with webhook_receiver([500, 200]) as rec:
        await enqueue(redis, "24011", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):

            async def dead() -> bool:
                r = await get_result(redis, "24011", settings=settings)
                return r is not None and r.webhook_status == "dead"

            await wait_until(dead, timeout=15)
            ((letter_id, fields),) = await redis.xrange(keys.webhook_dead_letters)
            env = worker_env(project_env, settings, KEY_PREFIX=settings.key_prefix)
            code, out, err = await run_cli(
                "dead-letters", "replay", letter_id.decode(), "--kind", "webhooks", env=env
            )
            assert code == 0, (out, err)
            await wait_until(lambda: _delivered(redis, settings, "24011"), timeout=15)
    assert len(rec.got) == 2
    (first_body, first), (body, replayed) = rec.got
    assert body == first_body == fields[b"body"]
    first_std, replayed_std = _standard_only(first), _standard_only(replayed)
    assert replayed_std["webhook-id"] == first_std["webhook-id"] == fields[b"delivery_id"].decode()
    assert int(replayed_std["webhook-timestamp"]) >= int(first_std["webhook-timestamp"])
    for secret in (NEW, OLD):
        assert verified(secret, body, replayed_std)["status"] == "EXPIRED"
    results = node_verify([(NEW, body, replayed_std), (OLD, body, replayed_std)])
    assert [r.ok for r in results] == [True, True], results
    assert results[0].data["container_id"] == "24011"


async def test_the_older_scheme_stays_available_by_setting(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """WEBHOOK_SIGNATURE_SCHEME=threads-poller: the X-Threads-Poller-Signature alone, keyed by
    the secret's text as before; both: each receiver finds its own header."""
    base = hook_settings(settings, webhook_secret=SecretStr(f"{NEW},{OLD}"))
    async with webhook_receiver([200]) as rec:
        old_body, old_only = await _deliver_one(
            redis,
            base.model_copy(update={"webhook_signature_scheme": SignatureScheme.THREADS_POLLER}),
            sim,
            rec,
            "24021",
        )
        body, both = await _deliver_one(
            redis,
            base.model_copy(update={"webhook_signature_scheme": SignatureScheme.BOTH}),
            sim,
            rec,
            "24022",
        )
    assert not {k.lower() for k in old_only} & set(STANDARD)
    for secret in (NEW, OLD):
        assert verify_signature(secret, old_body, old_only[SIGNATURE_HEADER])
        assert verify_signature(secret, body, both[SIGNATURE_HEADER])
        assert verifies(secret, body, _standard_only(both))
    assert not verify_signature("another-secret-0123", body, both[SIGNATURE_HEADER])
    (node,) = node_verify([(NEW, body, _standard_only(both))])
    assert node.ok, node
