"""``arq worker.arq_settings.WorkerSettings``: the same worker, for arq's own CLI.

Kept apart from ``worker.app`` because it reads the environment when imported.
"""

from __future__ import annotations

from config import load_settings
from worker.app import worker_options

_opts = worker_options(load_settings())


class WorkerSettings:
    """arq reads its options from class attributes."""

    functions = _opts["functions"]
    queue_name = _opts["queue_name"]
    redis_settings = _opts["redis_settings"]
    max_jobs = _opts["max_jobs"]
    job_timeout = _opts["job_timeout"]
    keep_result = _opts["keep_result"]
    max_tries = _opts["max_tries"]
    poll_delay = _opts["poll_delay"]
    on_startup = _opts["on_startup"]
    on_shutdown = _opts["on_shutdown"]
    ctx = _opts["ctx"]
    health_check_key = _opts["health_check_key"]
    job_completion_wait = _opts["job_completion_wait"]
