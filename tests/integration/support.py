"""Running the real mkosi command line in integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Outside the checkout, shared by every test and every run, so only the first run downloads.
CACHE = Path(os.environ.get("MKOSI_TEST_CACHE", "/var/cache/mkosi-tests"))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def mkosi(*args: str | Path, cwd: Path, check: bool = True) -> Result:
    """Run our real command line, as a user would."""
    process = subprocess.run(
        [sys.executable, "-m", "mkosi", f"--cache={CACHE / 'packages'}", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    result = Result(process.returncode, process.stdout, process.stderr)
    if check and process.returncode != 0:
        raise AssertionError(f"mkosi {args} failed with {process.returncode}:\n{process.stderr[-4000:]}")
    return result
