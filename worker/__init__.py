"""threads-poller's worker side: arq jobs, the Redis result store, producers and readers."""

from worker.producer import EnqueueOutcome, enqueue, enqueue_many
from worker.reader import get_result, wait_for
from worker.states import FINAL_STATES, State, is_final, is_success
from worker.store import PollResult

__all__ = [
    "FINAL_STATES",
    "EnqueueOutcome",
    "PollResult",
    "State",
    "enqueue",
    "enqueue_many",
    "get_result",
    "is_final",
    "is_success",
    "wait_for",
]
