"""The test suite, in three folders (``python -m pytest`` runs all of them; CI does):

``tests/unit/``         pure: no fixture that starts something, no network; seconds in all.
``tests/integration/``  a real redis-server, the simulator, the worker in process or as a process.
``tests/system/``       whole runs, marked ``slow``: the fault run, the fault matrix, Sentinel
                        failover, shutdown, the container image. ``-m "not slow"`` leaves them out.

Shared fixtures and hooks: tests/conftest.py; plain helpers, one module a purpose: tests/helpers/
(never imported from a conftest); processes, ports and servers: bench/harness.py.
"""
