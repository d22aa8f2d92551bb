"""What producers and readers import: ``PollerClient`` and the module-level wrappers.

May import: ``worker.core``, ``worker.store``, ``config``. Not ``worker.ops``, ``worker.jobs`` or
``worker.runtime``: a producer never pulls in the worker's runtime.
"""
