"""Issue 24, OpenTelemetry over the wire: the real ``threads-poller worker`` exports OTLP/HTTP
(protobuf) to a receiver this test runs on loopback, which decodes what arrives; and without
the SDK installed (its modules blocked from import) the worker runs as before."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.helpers.env import worker_env
from tests.helpers.receivers import serving_app
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import final_of, wait_until
from worker import enqueue

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
REPO = Path(__file__).resolve().parents[2]


class Collector:
    def __init__(self) -> None:
        self.spans: list[tuple[str, bytes, bytes, dict[str, object]]] = []
        self.resources: list[dict[str, object]] = []
        self.bodies: list[bytes] = []
        self.url = ""


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(v, kind) if kind else None


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    got = Collector()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        got.bodies.append(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for rs in message.resource_spans:
            got.resources.append({a.key: _value(a.value) for a in rs.resource.attributes})
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {a.key: _value(a.value) for a in span.attributes}
                    got.spans.append((span.name, span.trace_id, span.parent_span_id, attrs))
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    async with serving_app(app) as url:
        got.url = url
        yield got


async def test_the_worker_exports_otlp_http_to_the_configured_endpoint(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    collector: Collector,
    tmp_path: Path,
) -> None:
    cid = "24201"
    sim.state.set_script(cid, ["IN_PROGRESS", "FINISHED"])
    await enqueue(redis, cid, traceparent=TP, settings=settings)
    env = worker_env(
        project_env,
        settings,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SERVICE_NAME="poller-under-test",
    )
    proc = await start_worker(env, tmp_path / "worker.log")
    try:
        await final_of(redis, settings, cid, timeout=30)
        await wait_until(
            lambda: len([s for s in collector.spans if s[0] == "threads_poller.check"]) >= 2,
            timeout=20,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    checks = [s for s in collector.spans if s[0] == "threads_poller.check"]
    assert len(checks) == 2
    for _, trace_id, parent, attrs in checks:
        assert trace_id.hex() == TP[3:35]
        assert parent.hex() == TP[36:52]
        assert attrs["threads_poller.container_id"] == cid
    assert sorted(str(s[3].get("threads_poller.api.status")) for s in checks) == [
        "FINISHED",
        "IN_PROGRESS",
    ]
    assert any(r.get("service.name") == "poller-under-test" for r in collector.resources)
    for body in collector.bodies:
        assert TEST_TOKEN.encode() not in body
    assert proc.returncode == 0


async def test_without_the_sdk_the_worker_runs_and_tracing_stays_off(
    project_env: dict[str, str], settings: Settings, sim: RunningSimulator, tmp_path: Path
) -> None:
    """The ``otel`` extra is optional: with every ``opentelemetry`` module blocked from import
    (as where it is not installed), a worker with the variables set still polls to the end."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opentelemetry' or name.startswith('opentelemetry.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "import asyncio, os\n"
        "from redis.asyncio import Redis\n"
        "from config import load_settings\n"
        "from worker import enqueue, get_result\n"
        "from worker.ops import tracing\n"
        "from worker.runtime.app import build_worker\n"
        "assert tracing.configure() is tracing.NOOP\n"
        "async def main():\n"
        "    s = load_settings(_env_file=None)\n"
        "    r = Redis.from_url(s.redis_url)\n"
        "    await enqueue(r, '24301', traceparent=os.environ['TP'], settings=s)\n"
        "    w = build_worker(s)\n"
        "    task = asyncio.create_task(w.run())\n"
        "    for _ in range(300):\n"
        "        res = await get_result(r, '24301', settings=s)\n"
        "        if res is not None and res.final:\n"
        "            break\n"
        "        await asyncio.sleep(0.05)\n"
        "    w.stop()\n"
        "    await task\n"
        "    assert res is not None and res.status == 'FINISHED', res\n"
        "    assert not any(m.startswith('opentelemetry') for m in sys.modules)\n"
        "    print('ok')\n"
        "asyncio.run(main())\n"
    )
    sim.state.set_script("24301", ["IN_PROGRESS", "FINISHED"])
    env = worker_env(project_env, settings, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", TP=TP)
    # Asynchronous: the simulator answers from this test's event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().strip().endswith("ok")
    assert "SDK is not installed" in err.decode()
