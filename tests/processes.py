"""Process checks shared by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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


class Watch:
    """Reads every process's command line and environment over and over (in a thread) while a
    block runs, noting each process whose either holds one of `secrets`, and every command seen.

    A process that lives for less than one round (a few milliseconds) may be missed: the build's log,
    which records every command line mkosi runs, is checked besides.
    """

    def __init__(self, secrets: list[bytes]) -> None:
        self.secrets = secrets
        self.leaks: dict[int, bytes] = {}  # pid -> its command line
        self.commands: set[str] = set()  # the program names seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # A short pause between rounds leaves the build most of the core this thread would take.
        while not self._stop.wait(0.002):
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    self._look(int(entry.name))

    def _look(self, pid: int) -> None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return  # gone meanwhile
        if cmdline:
            self.commands.add(os.path.basename(cmdline.split(b"\0")[0]).decode(errors="replace"))
        if any(secret in cmdline or secret in environ for secret in self.secrets):
            self.leaks[pid] = cmdline
