"""The throughput family of phases: ``noop`` (bare arq's ceiling), ``floor`` (no job system:
one GET and one script call per check), ``throughput`` (ours: N containers drained by one
worker) and ``tracing`` (the throughput workload with tracing off, then on).
"""

from __future__ import annotations

import sys
import time

from bench.baselines import NOOP_QUEUE
from bench.measure import describe_commands, fmt, out, worker_commands_total
from bench.phases.processes import api_max_concurrency, event_loop
from bench.phases.world import Bench

JOB_EXPIRY_MS = 86_400_000


async def phase_noop(bench: Bench) -> None:
    # Stock arq, as it ships: its default job format (pickle), read by its own Worker. Our
    # worker's jobs are JSON (worker.store.jobdata) and never go through this.
    from arq.jobs import serialize_job

    from worker.store.keys import Keys

    n, f, job_data = bench.cfg.n, bench.figures, Keys().job_data
    out(f"\n[noop] bare arq: {n} no-op jobs, max_jobs={bench.cfg.max_jobs}, same poll_delay")
    await bench.reset()
    now_ms = int(time.time() * 1000)
    payload = serialize_job("noop", (), {}, None, now_ms)
    for i in range(0, n, 5000):
        async with bench.redis.pipeline(transaction=False) as pipe:
            for j in range(i, min(n, i + 5000)):
                job_id = f"noop:{j}"
                pipe.psetex(job_data(job_id), JOB_EXPIRY_MS, payload)
                pipe.zadd(NOOP_QUEUE, {job_id: now_ms})
            await pipe.execute()
    cmd = [
        sys.executable,
        "-m",
        "bench.bench",
        "--role",
        "noop-worker",
        "--redis-url",
        bench.redis_url,
        "--max-jobs",
        str(bench.cfg.max_jobs),
        "--poll-delay",
        str(bench.poll_delay(60.0)),
    ]

    async def count() -> int:
        return n - int(await bench.redis.zcard(NOOP_QUEUE))

    child, prog, delta, cpu0, cpu1 = await bench.run_child("noop-worker", cmd, count)
    child.stop()
    f.noop_rate, f.noop_full_rate = prog.steady_rate, prog.full_rate
    f.noop_cpu_ms, f.noop_redis_cpu_ms = prog.cpu_ms_per_item, prog.redis_cpu_ms_per_item
    f.noop_reads_per_job = delta.reads / n
    f.noop_cmds_per_job = worker_commands_total(delta) / n
    out(f"  done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s from spawn")
    out(
        f"  jobs/s: {fmt(prog.steady_rate)} (10-90 % of the queue), "
        f"{fmt(prog.full_rate)} (first to last)"
    )
    out(
        f"  Redis per job: {f.noop_reads_per_job:.2f} client round trips (reads), "
        f"{f.noop_cmds_per_job:.2f} commands: {describe_commands(delta, n)}"
    )
    out(
        f"  CPU per job (10-90 %): bare arq worker {fmt(prog.cpu_ms_per_item, '.3f')} ms, "
        f"redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms"
    )
    out(f"  CPU while running: {bench.cpu_line(cpu0, cpu1)}")


async def phase_floor(bench: Bench) -> None:
    n, f, cfg = bench.cfg.n, bench.figures, bench.cfg
    api_slots = api_max_concurrency(cfg.worker_env)
    loop = event_loop(cfg.worker_env)
    out(
        f"\n[floor] no job system: {n} checks, each one aiohttp GET of the simulator's status "
        f"endpoint + one EVALSHA (HSET + EXPIRE + ZADD); {cfg.max_jobs} checks at once, "
        f"{api_slots} requests at once (the worker's WORKER_MAX_JOBS, API_MAX_CONCURRENCY); "
        f"event loop {loop}"
    )
    await bench.reset()
    child, prog, delta, cpu0, cpu1, code = await bench.run_floor("floor", n)
    calls = await bench.sim("GET", "/calls")
    f.floor_rate, f.floor_full_rate = prog.steady_rate, prog.full_rate
    f.floor_cpu_ms, f.floor_redis_cpu_ms = prog.cpu_ms_per_item, prog.redis_cpu_ms_per_item
    f.floor_reads_per_check = delta.reads / n
    f.floor_cmds_per_check = worker_commands_total(delta) / n
    if prog.done < n or code not in (0, None):
        f.notes.append(f"floor: {prog.done}/{n} checks done, exit status {code}")
        out(f"  ! {prog.done}/{n} done; floor log tail:\n{child.tail()}")
    out(f"  done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s from spawn")
    out(
        f"  checks/s: {fmt(prog.steady_rate)} (10-90 % of the checks), "
        f"{fmt(prog.full_rate)} (first to last); API status calls {calls['status_calls']}"
    )
    out(
        f"  Redis per check: {f.floor_reads_per_check:.2f} client round trips (reads), "
        f"{f.floor_cmds_per_check:.2f} commands (incl. those run inside Lua): "
        f"{describe_commands(delta, n)}"
    )
    out(
        f"  CPU per check (10-90 %): floor process {fmt(prog.cpu_ms_per_item, '.3f')} ms, "
        f"redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms, simulator "
        f"{fmt(prog.ms_per_item('sim_cpu'), '.3f')} ms"
    )
    out(f"  CPU while running: {bench.cpu_line(cpu0, cpu1)}")


async def phase_throughput(bench: Bench) -> None:
    n, f = bench.cfg.n, bench.figures
    out(f"\n[throughput] ours: {n} containers enqueued beforehand, FINISHED on the first check")
    run = await bench.drain("throughput", 1, hold=False)
    prog, delta, calls = run.prog, run.delta, run.calls
    f.check_rate, f.check_full_rate, f.check_wall = (
        prog.steady_rate,
        prog.full_rate,
        prog.wall,
    )
    f.reads_per_check = delta.reads / n
    f.check_cpu_ms, f.check_redis_cpu_ms = prog.cpu_ms_per_item, prog.redis_cpu_ms_per_item
    f.cmds_per_check = worker_commands_total(delta) / n
    f.calls_per_container_throughput = int(calls["status_calls"]) / n
    f.rss_end_throughput_mib = None if run.rss_kib is None else run.rss_kib / 1024
    out(f"  done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s from spawn")
    out(
        f"  checks/s: {fmt(prog.steady_rate)} (10-90 % of the events), "
        f"{fmt(prog.full_rate)} (first to last)"
    )
    out(
        f"  API status calls per container: {f.calls_per_container_throughput:.3f} "
        f"({calls['status_calls']} calls, {n} containers)"
    )
    out(
        f"  Redis per check: {f.reads_per_check:.2f} client round trips (reads), "
        f"{f.cmds_per_check:.2f} commands (incl. those run inside Lua): "
        f"{describe_commands(delta, n)}"
    )
    out(
        f"  CPU per check (10-90 %): worker {fmt(prog.cpu_ms_per_item, '.3f')} ms, "
        f"redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms"
    )
    out(f"  CPU while running: {run.cpu}")
    out(f"  worker RSS at the end: {fmt(f.rss_end_throughput_mib, '.1f')} MiB")


async def phase_tracing(bench: Bench) -> None:
    """README "Tracing": the throughput workload with tracing off, then on (OTLP/HTTP to a
    loopback receiver that drops what it gets): the worker's CPU per check, both ways."""
    from aiohttp import web

    received = [0, 0]  # requests, bytes

    async def sink(request: web.Request) -> web.Response:
        received[0] += 1
        received[1] += len(await request.read())
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/traces", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}"
    n = bench.cfg.n
    try:
        out(f"\n[tracing] throughput of {n} containers, tracing off then on")
        off = await bench.drain("tracing-off", 1, hold=False)
        on = await bench.drain(
            "tracing-on",
            1,
            hold=False,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"},
        )
    finally:
        await runner.cleanup()
    a, b = off.prog.cpu_ms_per_item, on.prog.cpu_ms_per_item
    out(f"  worker CPU per check: off {fmt(a, '.3f')} ms, on {fmt(b, '.3f')} ms")
    out(
        f"  checks/s: off {fmt(off.prog.steady_rate)}, on {fmt(on.prog.steady_rate)}; "
        f"the receiver got {received[0]} exports, {received[1] / 1e6:.1f} MB"
    )
    if a and b:
        out(f"  tracing on costs {b - a:+.3f} ms CPU per check ({(b / a - 1) * 100:+.0f} %)")
