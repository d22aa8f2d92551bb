"""arq 0.28's ``Worker.run_job``, for a job whose data came with its claim.

Stock ``run_job`` starts with a round trip of its own (GET the job, INCR its try counter); the
claim script (``lua/claim_jobs.lua``) does that while it claims, so this copy starts from its
reply. And it ends with another (``finish_job``: delete the job, or re-schedule it), which a job
can make needless by doing arq's bookkeeping in its own last script: ``check_container`` does, in
``lua/record.lua``, atomically with the check's outcome, and says so by returning ``Settled``.

Below the marked line it is arq's code (MIT licence, (c) Samuel Colvin), kept verbatim, style
included, so that it can be compared with arq's, except the lines marked ``# threads-poller``.
``tests/test_job_claim.py`` fails if the installed arq's ``run_job`` is not the one this was
copied from.
"""

# ruff: noqa
# mypy: ignore-errors
# (arq's code is kept as arq wrote it, not restyled.)

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional, Union

from arq.constants import keep_cronjob_progress, retry_key_prefix
from arq.cron import CronJob
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import args_to_string, ms_to_datetime, timestamp_ms, truncate
from arq.worker import Function, JobExecutionFailed, Retry, RetryJob, logger, no_result

if TYPE_CHECKING:
    from arq import Worker

# In the job's ctx when its runner understands ``Settled``; stock arq's does not (it would take
# the return value for a result and delete the job), so a job must check before returning one.
SETTLES_ITSELF = "threads_poller_settles_itself"


class Settled(str):
    """Returned by a job that already did arq's ``finish_job`` work (for this run) itself."""

    rescheduled: bool

    def __new__(cls, value: str, *, rescheduled: bool) -> Settled:
        self = super().__new__(cls, value)
        self.rescheduled = rescheduled
        return self


# sha256 of ``inspect.getsource(arq.worker.Worker.run_job)`` in the arq this was copied from.
ARQ_RUN_JOB_SHA256 = "589a19059ff84ee777552dc9fa5ff76b17d6d0d7f99716d2720a2ed07ccb9607"


async def run_claimed_job(  # noqa: C901
    self: Worker, job_id: str, score: int, v: Optional[bytes], job_try: int, start_ms: int
) -> None:
    abort_job = False
    # ---- from here on: arq.worker.Worker.run_job, after its first round trip ----
    function_name, enqueue_time_ms = '<unknown>', 0
    args: tuple[Any, ...] = ()
    kwargs: dict[Any, Any] = {}

    async def job_failed(exc: BaseException) -> None:
        self.jobs_failed += 1
        result_data_ = serialize_result(
            function=function_name,
            args=args,
            kwargs=kwargs,
            job_try=job_try,
            enqueue_time_ms=enqueue_time_ms,
            success=False,
            result=exc,
            start_ms=start_ms,
            finished_ms=timestamp_ms(),
            ref=f'{job_id}:{function_name}',
            serializer=self.job_serializer,
            queue_name=self.queue_name,
            job_id=job_id,
        )
        await asyncio.shield(self.finish_failed_job(job_id, result_data_))

    if not v:
        logger.warning('job %s expired', job_id)
        return await job_failed(JobExecutionFailed('job expired'))

    try:
        function_name, args, kwargs, enqueue_job_try, enqueue_time_ms = deserialize_job_raw(
            v, deserializer=self.job_deserializer
        )
    except SerializationError as e:
        logger.exception('deserializing job %s failed', job_id)
        return await job_failed(e)

    if abort_job:
        t = (timestamp_ms() - enqueue_time_ms) / 1000
        logger.info('%6.2fs ⊘ %s:%s aborted before start', t, job_id, function_name)
        return await job_failed(asyncio.CancelledError())

    try:
        function: Union[Function, CronJob] = self.functions[function_name]
    except KeyError:
        logger.warning('job %s, function %r not found', job_id, function_name)
        return await job_failed(JobExecutionFailed(f'function {function_name!r} not found'))

    if hasattr(function, 'next_run'):
        # cron_job
        ref = function_name
        keep_in_progress: Optional[float] = keep_cronjob_progress
    else:
        ref = f'{job_id}:{function_name}'
        keep_in_progress = None

    if enqueue_job_try and enqueue_job_try > job_try:
        job_try = enqueue_job_try
        await self.pool.setex(retry_key_prefix + job_id, 88400, str(job_try))

    max_tries = self.max_tries if function.max_tries is None else function.max_tries
    if job_try > max_tries:
        t = (timestamp_ms() - enqueue_time_ms) / 1000
        logger.warning('%6.2fs ! %s max retries %d exceeded', t, ref, max_tries)
        self.jobs_failed += 1
        result_data = serialize_result(
            function_name,
            args,
            kwargs,
            job_try,
            enqueue_time_ms,
            False,
            JobExecutionFailed(f'max {max_tries} retries exceeded'),
            start_ms,
            timestamp_ms(),
            ref,
            self.queue_name,
            job_id=job_id,
            serializer=self.job_serializer,
        )
        return await asyncio.shield(self.finish_failed_job(job_id, result_data))

    result = no_result
    exc_extra = None
    finish = False
    timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
    incr_score: Optional[int] = None
    job_ctx = {
        'job_id': job_id,
        'job_try': job_try,
        'enqueue_time': ms_to_datetime(enqueue_time_ms),
        'score': score,
    }
    ctx = {**self.ctx, **job_ctx}
    ctx[SETTLES_ITSELF] = True  # threads-poller

    if self.on_job_start:
        await self.on_job_start(ctx)

    start_ms = timestamp_ms()
    success = False
    try:
        s = args_to_string(args, kwargs)
        extra = f' try={job_try}' if job_try > 1 else ''
        if (start_ms - score) > 1200:
            extra += f' delayed={(start_ms - score) / 1000:0.2f}s'
        logger.info('%6.2fs → %s(%s)%s', (start_ms - enqueue_time_ms) / 1000, ref, s, extra)
        self.job_tasks[job_id] = task = self.loop.create_task(function.coroutine(ctx, *args, **kwargs))

        # run repr(result) and extra inside try/except as they can raise exceptions
        try:
            result = await asyncio.wait_for(task, timeout_s)
        except (Exception, asyncio.CancelledError) as e:
            exc_extra = getattr(e, 'extra', None)
            if callable(exc_extra):
                exc_extra = exc_extra()
            raise
        else:
            result_str = '' if result is None or not self.log_results else truncate(repr(result))
        finally:
            del self.job_tasks[job_id]

    except (Exception, asyncio.CancelledError) as e:
        finished_ms = timestamp_ms()
        t = (finished_ms - start_ms) / 1000
        if self.retry_jobs and isinstance(e, Retry):
            incr_score = e.defer_score
            logger.info('%6.2fs ↻ %s retrying job in %0.2fs', t, ref, (e.defer_score or 0) / 1000)
            if e.defer_score:
                incr_score = e.defer_score + (timestamp_ms() - score)
            self.jobs_retried += 1
        elif job_id in self.aborting_tasks and isinstance(e, asyncio.CancelledError):
            logger.info('%6.2fs ⊘ %s aborted', t, ref)
            result = e
            finish = True
            self.aborting_tasks.remove(job_id)
            self.jobs_failed += 1
        elif self.retry_jobs and isinstance(e, (asyncio.CancelledError, RetryJob)):
            logger.info('%6.2fs ↻ %s cancelled, will be run again', t, ref)
            self.jobs_retried += 1
        else:
            logger.exception(
                '%6.2fs ! %s failed, %s: %s', t, ref, e.__class__.__name__, e, extra={'extra': exc_extra}
            )
            result = e
            finish = True
            self.jobs_failed += 1
    else:
        if isinstance(result, Settled):  # threads-poller: no finish_job round trip
            if result.rescheduled:
                self.jobs_retried += 1
            else:
                self.jobs_complete += 1
            if self.on_job_end:
                await self.on_job_end(ctx)
            if self.after_job_end:
                await self.after_job_end(ctx)
            return
        success = True
        finished_ms = timestamp_ms()
        logger.info('%6.2fs ← %s ● %s', (finished_ms - start_ms) / 1000, ref, result_str)
        finish = True
        self.jobs_complete += 1

    keep_result_forever = (
        self.keep_result_forever if function.keep_result_forever is None else function.keep_result_forever
    )
    result_timeout_s = self.keep_result_s if function.keep_result_s is None else function.keep_result_s
    result_data = None
    if result is not no_result and (keep_result_forever or result_timeout_s > 0):
        result_data = serialize_result(
            function_name,
            args,
            kwargs,
            job_try,
            enqueue_time_ms,
            success,
            result,
            start_ms,
            finished_ms,
            ref,
            self.queue_name,
            job_id=job_id,
            serializer=self.job_serializer,
        )

    if self.on_job_end:
        await self.on_job_end(ctx)

    await asyncio.shield(
        self.finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )
    )

    if self.after_job_end:
        await self.after_job_end(ctx)

