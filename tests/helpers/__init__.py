"""Plain helpers of the tests, one module a purpose; test modules import them from here, never
from ``tests/conftest.py`` (which keeps only fixtures and hooks; tests/unit/test_test_helpers.py
enforces it) nor from another test module.

``settings``   ``TEST_TOKEN`` and ``make_settings``: the service's settings for a test.
``env``        settings as the environment of a ``threads-poller`` process.
``waiting``    ``wait_until`` a condition; ``is_final``, ``finals``, ``final_of``: ids final.
``worker``     ``running_worker``: the real worker in the test's event loop.
``receivers``  ``serving_app`` (an aiohttp app on loopback) and ``webhook_receiver``.

Processes, ports and servers (redis-server, the simulator, ``free_port``) are shared with the
bench: bench/harness.py. The older one-purpose modules stay beside this package: tests/
cli_helpers.py, web_helpers.py, leaks.py, declared_keys.py, webhook_verify.py, kubernetes.py,
dashboard.py, schemathesis_hooks.py.
"""
