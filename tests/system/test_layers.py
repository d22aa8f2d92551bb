"""The import direction of worker/'s layers holds, and the contract can fail.

``lint-imports`` (import-linter; contracts in pyproject.toml) runs in the test command; here it
also runs against a copy of the tree with one wrong-way import added, which it must refuse.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")
def test_the_layers_hold() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")
@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("worker/core/_canary.py", "from worker.store import keys\n"),
        ("worker/core/_canary.py", "import redis\n"),
        ("worker/store/_canary.py", "from worker.jobs import check\n"),
        ("worker/runtime/_canary.py", "from worker.client import producer\n"),
        # The command line's modules once imported each other (worker/cli.py <-> cli_operator).
        ("worker/cli/operator.py", "from worker.cli.producer import cmd_status\n"),
        ("worker/cli/common.py", "from worker.cli.parser import build_parser\n"),
        # The check job once imported the delivery job (for body_for), which ran on its context.
        ("worker/jobs/check.py", "from worker.jobs.webhook import body_for\n"),
        # ... and the delivery job the check job (for the context both now share: jobs/context.py).
        ("worker/jobs/webhook.py", "from worker.jobs.check import CheckJob\n"),
        ("api_client/_canary.py", "import worker\n"),
    ],
)
def test_a_wrong_way_import_is_refused(tmp_path: Path, module: str, line: str) -> None:
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in ("worker", "config", "api_client", "simulator"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / module).write_text(line)
    done = lint(copy)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "BROKEN" in done.stdout
