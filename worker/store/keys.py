"""Every Redis key threads-poller uses, in one place (the README documents them)."""

from __future__ import annotations

from dataclasses import dataclass

# arq's own key prefixes (arq.constants); our Lua scripts create and inspect arq jobs directly so
# that "record the container" and "schedule its first check" are one atomic step. Spelled here
# only: every other module names a job's keys through ``Keys.job_data / job_lock / job_tries``.
ARQ_JOB_PREFIX = "arq:job:"
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"
ARQ_RETRY_PREFIX = "arq:retry:"

INTAKE_GROUP = "threads-poller"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "threads-poller"

    @property
    def result_prefix(self) -> str:
        """What every result hash's key starts with (handed to the scripts that name the hash of
        a container they read of: a carousel's parent, its children, a check's poll)."""
        return f"{self.prefix}:result:"

    def result(self, container_id: str) -> str:
        """Hash: the state of one container (schema in the README)."""
        return self.result_prefix + container_id

    @property
    def history_prefix(self) -> str:
        """What every history's key starts with (handed to record.lua: the parent's)."""
        return f"{self.prefix}:history:"

    def history(self, container_id: str) -> str:
        """String: the container's history, capped, expiring with its result hash
        (``worker.core.history``; README, "History")."""
        return self.history_prefix + container_id

    @property
    def events(self) -> str:
        """Stream: one entry per final state."""
        return f"{self.prefix}:events"

    @property
    def intake(self) -> str:
        """Stream: container ids from producers in any language (one XADD each)."""
        return f"{self.prefix}:intake"

    def intake_of(self, producer: str) -> str:
        """Stream: a named producer's own intake (``default``'s is ``intake``); only that
        producer's Redis user may write it, and its entries get that producer's scope."""
        return self.intake if producer == "default" else f"{self.intake}:{producer}"

    @property
    def dead_letters(self) -> str:
        """Stream: intake entries that could not be used, with the reason."""
        return f"{self.prefix}:intake:dead"

    @property
    def webhook_dead_letters(self) -> str:
        """Stream: webhook deliveries that failed for good, with the reason."""
        return f"{self.prefix}:webhooks:dead"

    @property
    def webhook_job_prefix(self) -> str:
        """What every webhook delivery job id starts with (``webhook_job_id`` below)."""
        return f"{self.prefix}:webhook:"

    def webhook_job_id(self, container_id: str, generation: str) -> str:
        return f"{self.webhook_job_prefix}{container_id}:{generation}"

    @property
    def config(self) -> str:
        """Hash: what the workers publish for producers (``pace_step_ms``: the pacing slot;
        ``webhook_signing``: 1 when they have a WEBHOOK_SECRET)."""
        return f"{self.prefix}:config"

    @property
    def inflight(self) -> str:
        """Sorted set: containers being polled, scored by their window's deadline."""
        return f"{self.prefix}:inflight"

    @property
    def queue(self) -> str:
        """arq's queue (sorted set of job ids by due time): the checks' (and foreign arq jobs')."""
        return f"{self.prefix}:queue"

    @property
    def webhook_queue(self) -> str:
        """The webhook deliveries' queue (sorted set of job ids by due time), claimed apart from
        ``queue``: a delivery that hangs on its receiver holds a delivery slot, never a check's
        (README, "Webhooks")."""
        return f"{self.prefix}:webhooks:queue"

    def worker_heartbeat(self, worker_name: str) -> str:
        """String (JSON, with a TTL): one live worker process (``worker.ops.health``)."""
        return f"{self.prefix}:worker:{worker_name}"

    @property
    def workers(self) -> str:
        """Sorted set: worker names by last heartbeat (Redis time), to find them without SCAN."""
        return f"{self.prefix}:workers"

    @property
    def account_prefix(self) -> str:
        """What every account hash's key starts with (handed to claim.lua: the account a
        check's hash names)."""
        return f"{self.prefix}:account:"

    def account(self, account: str) -> str:
        """Hash: throttling and token state of one account (Threads user id, or "default")."""
        return self.account_prefix + account

    def token_lease(self, account: str) -> str:
        """String (PX): the worker refreshing the account's token, and its fence number
        (``lua/token.lua``)."""
        return f"{self.prefix}:token:lease:{account}"

    def token_fence(self, account: str) -> str:
        """String: a counter, one more for each lease taken; only the holder of the latest may
        write a refreshed token back."""
        return f"{self.prefix}:token:fence:{account}"

    def rate(self, account: str) -> str:
        """Sorted set: the account's pacing calendar, runs of taken slots (lua/lib.lua,
        ``reserve_slot``). Earlier versions kept a hash at ``{prefix}:rate:{account}`` and a key
        per slot: a name of its own, so that versions side by side during an upgrade never read
        each other's structure (each just paces on its own calendar for a minute)."""
        return f"{self.prefix}:rate:{account}:runs"

    def quota(self, account: str) -> str:
        """String: JSON of the account's last publishing limit (QuotaSnapshot)."""
        return f"{self.prefix}:quota:{account}"

    def quota_lock(self, account: str) -> str:
        """String (PX): the worker refreshing the account's quota this period (the others skip
        it: ``worker.jobs.quota``)."""
        return f"{self.quota(account)}:lock"

    @property
    def stats_prefix(self) -> str:
        """What every minute's stats hash starts with (``stats`` below; cancel.lua adds the
        minute on Redis' clock)."""
        return f"{self.prefix}:stats:"

    def stats(self, minute: int) -> str:
        """Hash: the counts of one minute of Redis' clock (``worker.ops.stats``)."""
        return f"{self.stats_prefix}{minute}"

    @property
    def audit(self) -> str:
        """Stream: the operators' actions (cancel, poll again, replay, discard), each with its
        target, reason, outcome and the key that asked (``AdminStore.note_action``), capped."""
        return f"{self.prefix}:audit"

    @property
    def accounts(self) -> str:
        """Sorted set: accounts named at enqueue, scored by when they were last seen."""
        return f"{self.prefix}:accounts"

    # ----- a job's own keys (arq's layout: global names, the job id carries the prefix) --------

    @property
    def job_data_prefix(self) -> str:
        """What every job's data key starts with (for scripts that name them: claim.lua)."""
        return ARQ_JOB_PREFIX

    @property
    def job_lock_prefix(self) -> str:
        return ARQ_IN_PROGRESS_PREFIX

    @property
    def job_tries_prefix(self) -> str:
        return ARQ_RETRY_PREFIX

    def job_data(self, job_id: str) -> str:
        """String (PX): the job's data (``worker.store.jobdata``)."""
        return ARQ_JOB_PREFIX + job_id

    def job_lock(self, job_id: str) -> str:
        """String (PX): the token of the run holding the job (its lease: ``worker.store.queue``)."""
        return ARQ_IN_PROGRESS_PREFIX + job_id

    def job_tries(self, job_id: str) -> str:
        """String: how many times the job was claimed."""
        return ARQ_RETRY_PREFIX + job_id

    @property
    def check_job_prefix(self) -> str:
        """What every check job id starts with (``job_id`` below)."""
        return f"{self.prefix}:check:"

    def job_id_base(self, container_id: str) -> str:
        return f"{self.check_job_prefix}{container_id}:"

    def job_id(self, container_id: str, generation: str) -> str:
        """One job carries one container through its whole window (each check re-schedules it)."""
        return self.job_id_base(container_id) + generation
