"""The job functions and their typed context: a poll's check (status, publish), the webhook
delivery, where tokens come from, the quota read.

May import: ``worker.core``, ``worker.store``, ``worker.ops``, ``api_client``. Not
``worker.runtime`` or ``worker.client``.
"""
