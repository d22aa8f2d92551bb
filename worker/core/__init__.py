"""Pure vocabulary and decisions: states, the result model, the schedule, the lifecycle planner,
publish rules, id validation, the service's errors, a run's lease (its renewals and cut-off).

May import: the standard library, ``config`` (values only) and ``api_client``'s errors, models and
policy (pure). Never Redis, aiohttp, arq or a clock: every ``now`` is passed in.
"""
