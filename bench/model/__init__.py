"""The lifecycle's model: a stateful property test on a real redis-server pair.

``bench.model.lifecycle`` is the state machine and its invariants, ``bench.model.graph`` the Graph
API and webhook receiver it checks against, ``bench.model.topology`` the Redis primary, replica
and reply-losing proxy. ``python -m bench.model`` runs it long and prints what it covered;
``tests/integration/test_lifecycle_model.py`` runs a bounded number of examples.
"""
