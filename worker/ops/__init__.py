"""Operations: Prometheus metrics, per-process heartbeats (health), JSON logs.

May import: ``worker.core``, ``worker.store``. Not ``worker.jobs``, ``worker.runtime`` or
``worker.client``.
"""
