"""tests/system: whole runs of the service (minutes, many processes). Every test here is marked
``slow`` (registered in pyproject.toml). They still run in the default ``python -m pytest``, which
CI uses; ``-m "not slow"`` leaves them out for a quick round.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A session-wide hook: it sees every collected test, so it picks those under this folder.
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)
