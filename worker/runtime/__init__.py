"""The worker process: wiring from ``Settings``, the job runner, and the background loops
(intake consumer, reconciler, quota refresh, heartbeat, metrics) started and stopped together.

May import every layer below it (``jobs``, ``ops``, ``store``, ``core``), not ``worker.client``.
Only ``worker.cli`` and ``worker.demo`` import this package.
"""
