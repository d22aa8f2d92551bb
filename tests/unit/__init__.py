"""Pure tests: no Redis, no simulator, no network (tests/unit/conftest.py enforces it)."""
