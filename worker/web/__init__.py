"""``threads-poller serve``: the versioned HTTP API (``/v1``) and the operator console (``/``).

One aiohttp application (``app.build_app``): JSON for any pipeline that does not speak Redis,
server-rendered HTML for operators, both reading and writing through ``worker.store`` (the same
scripts the workers and the Python client use) and ``worker.client``.

May import: ``worker.core``, ``worker.store``, ``worker.ops``, ``worker.client``, ``config``,
``api_client``. Not ``worker.jobs`` or ``worker.runtime``: the server runs no job and calls no
Graph API. ``errors``, ``requests``, ``views``, ``openapi`` and ``access`` (who may use the API
and the console) are pure (no I/O).
"""
