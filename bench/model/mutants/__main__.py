"""``python -m bench.model.mutants [NAME ...] [--examples N]``: is the lifecycle's model sharp?

Each ``*.patch`` here reverts one fix of issue 20 (its first line says which). For each, this
copies the tree, applies the patch, and runs ``python -m bench.model`` on the copy; it prints
whether the model found a broken promise, in which example (before shrinking) and what it was.
A fix the model cannot find when reverted is a blind spot of the model.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SKIP = shutil.ignore_patterns(".venv", ".git", "test-artifacts", "__pycache__", ".mypy_cache")


def run_one(
    patch: Path, examples: int, steps: int, derandomize: bool = False
) -> tuple[bool, str, float]:
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=SKIP)
        subprocess.run(["git", "apply", str(patch)], cwd=tree, check=True)
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.model",
                "--examples",
                str(examples),
                "--steps",
                str(steps),
                "--no-shrink",
                # The model's derandomized sequence of examples (the test command's).
                *(["--seed", "0"] if derandomize else []),
            ],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        took = time.monotonic() - t0
        found = re.search(
            r"^BROKEN PROMISE, first seen in example (\d+|\?): (.*)$", done.stdout, re.M
        )
        if found:
            return True, f"example {found[1]}: {found[2]}", took
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
        return False, tail[0], took


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model.mutants", description=__doc__)
    parser.add_argument("names", nargs="*", help="patch names (default: all)")
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--derandomize", action="store_true", help="the same examples every run (bench.model's)"
    )
    args = parser.parse_args()
    patches = sorted(HERE.glob("*.patch"))
    if args.names:
        patches = [p for p in patches if any(n in p.stem for n in args.names)]
    missed = 0
    for patch in patches:
        why = patch.read_text().splitlines()[0].lstrip("# ")
        found, detail, took = run_one(patch, args.examples, args.steps, args.derandomize)
        missed += not found
        verdict = "FOUND " if found else "MISSED"
        print(f"{verdict} {patch.stem} ({took:.0f} s): {detail}\n       reverts: {why}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
