"""Nothing is lost, never strand a poll: the fault harness of the bench and the system tests.

Two ways to break the service on purpose, on one set of parts:

``python -m bench.faults.matrix``
    one fault per row (issue 16), each against fresh workers, Redis and simulator
    (``matrix``: the rows' list and the command; ``rows`` / ``rows_api``: the rows;
    ``harness``: one row's world, its monitor of stranded polls and its accounting).
``python -m bench.faults.run``
    the long run: thousands of containers through SIGKILLs, a Redis crash and random API
    faults (``run``: the run and the command; ``scenarios``: what each container must end as
    and the verdict on it).

Shared by both: ``ledger`` (every status call as the simulator saw it), ``pool`` (the worker
processes and their environment), ``invariants`` (the call bound, one final event per poll, the
pacing and gap figures; the lifecycle model, ``bench.model``, uses the final-event ones too) and
``report`` (each one's figures and text). ``tests/system/test_fault_matrix.py`` and
``tests/system/test_fault_run.py`` run both at CI size.
"""
