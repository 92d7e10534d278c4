"""Running the real mkosi command line in integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# A module's directory for its fixtures' projects and images: removed once the module's tests are
# done (kept when one failed), so that a run holds one module's images at a time, not all of them.
ModuleDir = Callable[[str], Path]

# What dpkg --verify may find missing: the documentation dpkg was told to leave out (it still lists
# such files as the package's).
LEFT_OUT = re.compile(r"^missing\s+(c\s+)?/usr/share/(doc|man|info|lintian)(/|$)")

# Outside the checkout, shared by every test and every run, so only the first run downloads.
CACHE = Path(os.environ.get("MKOSI_TEST_CACHE", "/var/cache/mkosi-tests"))


def own_cache(cache: Path) -> Path:
    """A package cache of its own at `cache` (so a stage cache nobody else uses), whose Debian
    bookworm pool is the shared one: packages are never downloaded twice."""
    cache.mkdir()
    pool = CACHE / "packages" / "debian~bookworm~x86-64"
    pool.mkdir(parents=True, exist_ok=True)
    (cache / pool.name).symlink_to(pool)
    return cache


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def mkosi(*args: str | Path, cwd: Path, check: bool = True, timeout: float | None = None, stdin: str = "") -> Result:
    """Run our real command line, as a user would (killed after `timeout` seconds, if given; its
    commands die with it), with `stdin` as what it reads (a secret given as --password=-)."""
    process = subprocess.run(
        [sys.executable, "-m", "mkosi", f"--cache={CACHE / 'packages'}", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=timeout,
        input=stdin,
    )
    result = Result(process.returncode, process.stdout, process.stderr)
    if check and process.returncode != 0:
        raise AssertionError(f"mkosi {args} failed with {process.returncode}:\n{process.stderr[-4000:]}")
    return result


def log_events(stderr: str) -> list[dict[str, object]]:
    """The build's JSON log lines (its console is not a terminal here)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def boot(
    project: Path,
    *options: str,
    until: Sequence[str],
    timeout: float,
    answers: Mapping[str, bytes] | None = None,
    qemu_args: Sequence[str] = (),
) -> str:
    """Boot an image with `mkosi [options] qemu -snapshot [qemu_args]` until the console shows one
    of `until` (or qemu exits, or time is up); return the console. `answers` maps a prompt to what
    is typed on the serial console each time the prompt appears."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mkosi", *options, "qemu", "-snapshot", *qemu_args],
        cwd=project,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None and process.stdin is not None
    os.set_blocking(process.stdout.fileno(), False)
    console = b""
    answered: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            chunk = process.stdout.read()
            if not chunk:
                time.sleep(0.5)
                continue
            console += chunk
            text = console.decode(errors="replace")
            for prompt, answer in (answers or {}).items():
                if text.count(prompt) > answered.get(prompt, 0):
                    answered[prompt] = text.count(prompt)
                    process.stdin.write(answer)
                    process.stdin.flush()
            if any(word in text for word in until):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return console.decode(errors="replace")
