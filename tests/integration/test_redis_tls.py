"""Issue 15, item 2: ``rediss://`` works, with a self-signed certificate, and verifies it.

A ``redis-server`` that only speaks TLS (``--port 0``) with a password; its certificate, made here
with ``openssl``, names ``localhost`` only. The worker and the CLI reach it with
``REDIS_TLS_CA_FILE``; without that CA, or by an address the certificate does not name, the
connection is refused, and the password shows up in no message.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bench.harness import Child, free_port, redis_binary, spawn
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.settings import make_settings
from tests.helpers.waiting import final_of
from tests.helpers.worker import running_worker
from worker import enqueue
from worker.store.connections import open_redis

PASSWORD = "tls-redis-password-0123456789"


@dataclass
class TlsRedis:
    port: int
    ca: Path
    child: Child

    def url(self, host: str = "localhost", password: str | None = PASSWORD, query: str = "") -> str:
        auth = f":{password}@" if password else ""
        return f"rediss://{auth}{host}:{self.port}/0{query}"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("redis-tls")
    cert, key = make_certificate(directory)
    port = free_port()
    child = spawn(
        "redis-tls",
        [
            redis_binary(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        directory / "redis.out",
    )
    server = TlsRedis(port, cert, child)
    deadline = time.monotonic() + 10
    while not asyncio.run(_pings(server)):
        if not child.alive() or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the TLS redis-server did not start:\n{child.tail()}")
        time.sleep(0.05)
    yield server
    child.stop()


async def _pings(server: TlsRedis) -> bool:
    client = Redis.from_url(server.url(), ssl_ca_certs=str(server.ca), socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (RedisConnectionError, OSError):
        return False
    finally:
        await client.aclose()


async def test_the_worker_and_the_cli_work_over_tls(
    tls_redis: TlsRedis, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    settings = make_settings(tls_redis.url(), sim.base_url, redis_tls_ca_file=tls_redis.ca)
    redis = open_redis(settings)
    try:
        await redis.flushall()
        sim.state.set_script("9901", ["IN_PROGRESS", "FINISHED"])
        await enqueue(redis, "9901", settings=settings)
        async with running_worker(settings):
            await final_of(redis, settings, "9901", timeout=15)
    finally:
        await redis.aclose()
    # Only TLS is spoken on that port: a plaintext client gets nowhere.
    plain = Redis.from_url(
        tls_redis.url().replace("rediss://", "redis://"), socket_timeout=2, socket_connect_timeout=2
    )
    try:
        with pytest.raises(RedisConnectionError):
            await plain.ping()
    finally:
        await plain.aclose()
    env = dict(project_env, REDIS_URL=tls_redis.url(), REDIS_TLS_CA_FILE=str(tls_redis.ca))
    code, out, err = await run_cli("status", "9901", env=env)
    assert code == 0 and "FINISHED" in out, err


async def test_the_password_can_come_from_a_file(
    tls_redis: TlsRedis, project_env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    env = dict(
        project_env,
        REDIS_URL=tls_redis.url(password=None),
        REDIS_PASSWORD_FILE=str(secret),
        REDIS_TLS_CA_FILE=str(tls_redis.ca),
    )
    code, _, err = await run_cli("status", "9902", env=env)
    assert code == 1 and "unknown" in _, err  # reached Redis: the id is just not there
    secret.chmod(0o644)
    code, _, err = await run_cli("status", "9902", env=env)
    assert code == 2 and "REDIS_PASSWORD_FILE" in err and PASSWORD not in err


@pytest.mark.parametrize(
    ("variant", "why"),
    [
        ("no CA", "certificate verify failed"),
        ("an address the certificate does not name", "IP address mismatch"),
        ("the wrong password", "refused the credentials"),
    ],
)
async def test_what_does_not_verify_is_refused_and_says_no_password(
    tls_redis: TlsRedis, project_env: dict[str, str], variant: str, why: str
) -> None:
    env = dict(project_env, REDIS_URL=tls_redis.url(), REDIS_TLS_CA_FILE=str(tls_redis.ca))
    if variant == "no CA":
        del env["REDIS_TLS_CA_FILE"]
    elif variant == "the wrong password":
        env["REDIS_URL"] = tls_redis.url(password="wrong-password-0123")
    else:
        env["REDIS_URL"] = tls_redis.url("127.0.0.1")
    code, out, err = await run_cli("status", "9903", env=env)
    assert code == 4, (out, err)
    assert PASSWORD not in out + err and "wrong-password-0123" not in err
    # What it was, from the library itself (the CLI names only the exception's type).
    if why != "refused the credentials":
        assert "cannot reach Redis at rediss://:***@" in err, err
        settings = make_settings(env["REDIS_URL"], "http://127.0.0.1:1/v1.0")
        settings = settings.model_copy(
            update={"redis_tls_ca_file": env.get("REDIS_TLS_CA_FILE") and tls_redis.ca}
        )
        client = open_redis(settings)
        try:
            with pytest.raises(RedisConnectionError, match=why) as info:
                await client.ping()
        finally:
            await client.aclose()
        assert PASSWORD not in str(info.value) and PASSWORD not in repr(client)
    else:
        assert why in err


async def test_an_explicit_opt_out_of_the_host_name_check_is_honoured(tls_redis: TlsRedis) -> None:
    url = tls_redis.url("127.0.0.1", query="?ssl_check_hostname=false")
    settings = make_settings(url, "http://127.0.0.1:1/v1.0", redis_tls_ca_file=tls_redis.ca)
    client = open_redis(settings)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
