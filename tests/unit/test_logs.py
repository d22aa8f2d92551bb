"""Logging set-up (pure): below DEBUG, arq's per-job INFO lines are not even built. What a
running worker logs: tests/integration/test_logs.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from config import LogFormat
from worker.ops.logs import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, arq_log = logging.getLogger(), logging.getLogger("arq.worker")
    saved = (list(root.handlers), root.level, arq_log.level, list(arq_log.filters))
    yield
    root.handlers[:], arq_log.filters[:] = saved[0], saved[3]
    root.setLevel(saved[1])
    arq_log.setLevel(saved[2])


def test_arq_info_lines_are_not_built_below_debug(restore_logging: None) -> None:
    arq_log = logging.getLogger("arq.worker")
    setup_logging(LogFormat.JSON, "INFO")
    # arq's per-job "→ job" / "← job" records would be built and then dropped: skip them.
    assert not arq_log.isEnabledFor(logging.INFO)
    assert arq_log.isEnabledFor(logging.WARNING)  # its failures still show
    setup_logging(LogFormat.JSON, "DEBUG")
    assert arq_log.isEnabledFor(logging.DEBUG)
