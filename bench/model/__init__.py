"""The lifecycle's model: a stateful property test on a real redis-server pair.

``bench.model.rules`` is the state machine's rules, ``bench.model.faults`` its base and its rarer
events, ``bench.model.world`` one example's deployment and the end-of-example drain,
``bench.model.invariants`` the promises it checks, ``bench.model.graph`` the Graph API and webhook
receiver it checks against, ``bench.model.topology`` the Redis primary, replica and reply-losing
proxy. ``python -m bench.model`` runs it long and prints what it covered;
``tests/integration/test_lifecycle_model.py`` runs a bounded number of examples.
"""
