"""The one way mkosi runs programs.

Every subprocess goes through `run()`: its output is streamed line by line into the build's log,
it starts in a session of its own so that it and everything it spawns form one process group, and
that whole group is terminated when the caller is cancelled (Ctrl-C, SIGTERM, a failing sibling
task) or when the command ends and leaves stragglers behind; if mkosi itself is killed (SIGKILL), the
kernel kills the command (a parent-death signal). A failed command raises
`CommandError`, which carries the command line and the last lines it printed. A command that
prints a line saying it is about to wait on its own (`give_up`) is ended there and fails the same way.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process

from mkosi.errors import MkosiError
from mkosi.events import SubprocessFinished, log_event

# How long a cancelled process group gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_SECONDS = 5.0
TAIL_LINES = 20

Argument = str | os.PathLike[str]
DIE_WITH_MKOSI = ("setpriv", "--pdeathsig", "KILL", "--")


class SubprocessClock:
    """Wall time during which at least one subprocess of a build was running.

    What remains of the build's wall time is mkosi's own overhead, which should stay small.
    """

    def __init__(self) -> None:
        self.busy = 0.0
        self._active = 0
        self._since = 0.0

    def started(self) -> None:
        if self._active == 0:
            self._since = time.monotonic()
        self._active += 1

    def stopped(self) -> None:
        self._active -= 1
        if self._active == 0:
            self.busy += time.monotonic() - self._since


subprocess_clock: contextvars.ContextVar[SubprocessClock | None] = contextvars.ContextVar(
    "subprocess_clock", default=None
)

# Variables every subprocess of the current build gets (SOURCE_DATE_EPOCH): set once by the build,
# seen by the tasks it starts, and by no other build of the same process.
build_environment: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "build_environment", default=()
)


@contextlib.contextmanager
def _counted() -> Iterator[None]:
    clock = subprocess_clock.get()
    if clock:
        clock.started()
    try:
        yield
    finally:
        if clock:
            clock.stopped()


@dataclass(frozen=True)
class CompletedCommand:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    tail: tuple[str, ...]  # the last lines of output (standard error only, when stdout is captured)


class CommandError(MkosiError):
    """A command exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.tail = tuple(tail)
        message = f"{shlex.join(self.argv)} failed with exit status {returncode}"
        if self.tail:
            message += ", last output:\n" + "\n".join(f"    {line}" for line in self.tail)
        super().__init__(message)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _terminate(process: Process, grace: float) -> None:
    """TERM the whole process group, wait a little for the leader, then KILL whatever is left."""
    _signal_group(process.pid, signal.SIGTERM)
    with anyio.move_on_after(grace):
        await process.wait()
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()
    # The leader is gone, but a killed member of its group may still be finishing a write into the
    # tree that the caller is about to remove ("Directory not empty"): wait until none is left.
    with anyio.move_on_after(grace):
        while _group_alive(process.pid):
            await anyio.sleep(0.01)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies, which do nothing, aside)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                # After the command name in parentheses: state, parent, process group.
                state, _, group = f.read().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if group == str(pgid) and state != "Z":
            return True
    return False


async def _pump(
    stream: ByteReceiveStream | None,
    name: str,
    log: Any,
    tail: collections.deque[str],
    captured: list[bytes] | None,
    give_up: re.Pattern[str] | None = None,
    gave_up: anyio.Event | None = None,
) -> None:
    if stream is None:
        return
    pending = b""

    def emit(raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        tail.append(line)
        log.debug(line, stream=name)
        if give_up is not None and gave_up is not None and give_up.search(line):
            gave_up.set()

    async for chunk in stream:
        if captured is not None:
            captured.append(chunk)
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            emit(raw)
    if pending:
        emit(pending)


async def _end_when_given_up(process: Process, gave_up: anyio.Event, ended: list[bool]) -> None:
    """KILL the command's group once it printed the line it is ended at (if it is still running).
    Not TERM: zypper takes that for a request to stop waiting, and tries again at once."""
    await gave_up.wait()
    if process.returncode is None:
        ended.append(True)
        _signal_group(process.pid, signal.SIGKILL)


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    extra = {**dict(build_environment.get()), **(env or {})}
    return {**os.environ, **extra} if extra else None


async def run(
    argv: Sequence[Argument],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    stdin: int | None = None,
    capture_stdout: bool = False,
    merge_stderr: bool = False,
    check: bool = True,
    log: Any = None,
    grace: float = TERMINATE_GRACE_SECONDS,
    give_up: str | None = None,
) -> CompletedCommand:
    """Run a command to completion; see the module docstring for the guarantees.

    `env` entries are added to mkosi's own environment. With `capture_stdout`, standard output is
    returned instead of logged (standard error is still logged, unless `merge_stderr` sends it to
    standard output too). `input` is written to standard input, so secrets never need to appear on
    a command line. `stdin` is a file descriptor the command reads instead (a file mkosi opened
    itself, so that the command reads the very file mkosi checked). A line of its logged output
    (not a captured standard output) that matches the pattern `give_up` ends the command's process
    group (SIGKILL) and fails it, whatever its exit status: for a tool that would wait before trying
    again by itself, with no setting for it.
    """
    if input is not None and stdin is not None:
        raise ValueError("run() takes input or stdin, not both")
    args = tuple(os.fspath(a) for a in argv)
    log = (log or structlog.get_logger("mkosi")).bind(cmd=args[0])
    log.debug("running " + shlex.join(args))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    captured: list[bytes] | None = [] if capture_stdout else None
    pattern = re.compile(give_up) if give_up is not None else None
    gave_up = anyio.Event()
    ended: list[bool] = []  # set when mkosi ended the command for such a line

    started = time.monotonic()
    with _counted():
        process = await anyio.open_process(
            # Killed with mkosi, even by SIGKILL, which leaves mkosi no chance to end the group: the
            # kernel sends the command SIGKILL when its parent dies. Commands that run others in
            # namespaces of their own (unshare --kill-child, systemd-nspawn) pass it on to them.
            [*DIE_WITH_MKOSI, *args],
            stdin=subprocess.PIPE if input is not None else (subprocess.DEVNULL if stdin is None else stdin),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            cwd=cwd,
            env=_environment(env),
            start_new_session=True,
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, process.stdout, "stdout", log, tail, captured, pattern, gave_up)
                tg.start_soon(_pump, process.stderr, "stderr", log, tail, None, pattern, gave_up)
                if pattern is not None:
                    tg.start_soon(_end_when_given_up, process, gave_up, ended)
                if process.stdin is not None:
                    async with process.stdin:
                        await process.stdin.send(input or b"")
                returncode = await process.wait()
                # Whatever the command left running in its group would hold our pipes open forever.
                _signal_group(process.pid, signal.SIGKILL)
                gave_up.set()  # the watcher's wait is over either way
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _terminate(process, grace)
            raise
        finally:
            # Its pipes' transports closed now, not whenever the garbage collector finds them.
            with anyio.CancelScope(shield=True):
                await process.aclose()

        log_event(log, SubprocessFinished(args[0], returncode, round(time.monotonic() - started, 2)))
        stdout = b"".join(captured).decode(errors="replace") if captured is not None else ""
        if ended or (check and returncode != 0):
            raise CommandError(args, returncode, tail)
        return CompletedCommand(args, returncode, stdout, tuple(tail))


async def run_interactive(argv: Sequence[Argument], *, env: Mapping[str, str] | None = None, log: Any = None) -> int:
    """Run a command on mkosi's own terminal (a shell in the image, a VM's console); return its status.

    Unlike `run()`, the command stays in mkosi's process group so that it keeps the controlling
    terminal. When mkosi is cancelled it gets SIGTERM, then SIGKILL after the grace period.
    """
    args = tuple(os.fspath(a) for a in argv)
    (log or structlog.get_logger("mkosi")).debug("running " + shlex.join(args))
    process = await anyio.open_process(
        args, stdin=None, stdout=None, stderr=None, env={**os.environ, **env} if env else None
    )
    try:
        return await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            process.terminate()
            with anyio.move_on_after(TERMINATE_GRACE_SECONDS):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        raise
