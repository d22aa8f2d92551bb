"""Tests import plain helpers from tests/helpers/, never from a ``conftest.py``: pytest loads a
conftest itself (importing it again under another name runs it twice), and a conftest that is
also a library grows helpers nobody finds. This reads every module of tests/ and bench/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def conftest_imports(source: str) -> list[int]:
    """The line numbers of the imports of a ``conftest`` module in ``source``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [*(node.module or "").split("."), *(a.name for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [part for a in node.names for part in a.name.split(".")]
        else:
            continue
        if "conftest" in names:
            lines.append(node.lineno)
    return lines


def test_no_module_imports_a_conftest() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in ("tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in conftest_imports(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"import these from tests/helpers/ instead: {found}"


def test_the_check_sees_every_spelling() -> None:
    for source in (
        "from tests.conftest import wait_until",
        "import tests.conftest",
        "from tests import conftest",
        "from .conftest import make_settings",
        "def f():\n    from tests.conftest import TEST_TOKEN",
    ):
        assert conftest_imports(source), source
    assert conftest_imports("from tests.helpers.waiting import wait_until") == []
