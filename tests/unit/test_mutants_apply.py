"""Every mutant of the lifecycle's model (bench/model/mutants: each reverts one fix) still
applies to this tree, so ``python -m bench.model.mutants`` can show the model finds each one.
A change that moves a patched line must regenerate its patch (this fails until it does)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATCHES = sorted((ROOT / "bench" / "model" / "mutants").glob("*.patch"))


def test_there_are_mutants() -> None:
    assert len(PATCHES) >= 10


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_each_mutant_applies(patch: Path) -> None:
    done = subprocess.run(
        ["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
