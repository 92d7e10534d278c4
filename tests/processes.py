"""Process checks shared by tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """Whether the process still runs; a zombie is as good as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def packages_imported_by(*modules: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing `modules` from this
    checkout (run from its top, whatever the current directory)."""
    script = f"import sys\nimport {', '.join(modules)}\nprint(*{{m.partition('.')[0] for m in sys.modules}})"
    result = subprocess.run([sys.executable, "-c", script], cwd=CHECKOUT, capture_output=True, text=True, check=True)
    return set(result.stdout.split())
