"""Run vibe's property tests (every hypothesis test) again and again, each run with a
fresh random seed, and stop at the first failure with the seed that reproduces it.

    python tools/property_runs.py --runs 200            # seeds drawn at random (printed)
    python tools/property_runs.py --runs 5 --first 7    # seeds 7, 8, ..., 11
    VIBE_HYPOTHESIS_PROFILE=seeded python -m pytest -m hypothesis --hypothesis-seed=S tests   # replay S

`make test` draws one fixed, derandomized set of examples; this checks that no random
draw turns a property test red (the `seeded` profile of tests/conftest.py: hypothesis'
default number of examples, no example database, so runs do not replay each other).
All runs share one Python process, so imports are paid once, and only the test files
that import hypothesis are collected.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hypothesis_files() -> list[str]:
    """The test files that import hypothesis (collecting the rest each run costs seconds)."""
    return sorted(str(f) for f in (ROOT / "tests").rglob("test_*.py")
                  if any(line.startswith(("from hypothesis", "import hypothesis"))
                         for line in f.read_text().splitlines()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="runs in a row (default 200)")
    ap.add_argument("--first", type=int, default=None, help="seed of the first run (default: random)")
    args = ap.parse_args(argv)
    os.environ["VIBE_HYPOTHESIS_PROFILE"] = "seeded"
    import pytest

    first = secrets.randbelow(2**31) if args.first is None else args.first
    files = hypothesis_files()
    start = time.monotonic()
    for k in range(args.runs):
        seed = first + k
        rc = pytest.main(["-q", "-m", "hypothesis", "-p", "no:cacheprovider", "--no-header", "-p", "no:warnings",
                          f"--hypothesis-seed={seed}", *files])
        print(f"run {k + 1}/{args.runs}: seed {seed}: {'passed' if rc == 0 else f'FAILED (exit {rc})'} "
              f"({time.monotonic() - start:.0f} s so far)", flush=True)
        if rc != 0:
            print(f"replay: VIBE_HYPOTHESIS_PROFILE=seeded python -m pytest -m hypothesis --hypothesis-seed={seed} tests",
                  file=sys.stderr)
            return 1
    print(f"{args.runs} runs in a row passed (seeds {first}..{first + args.runs - 1})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
