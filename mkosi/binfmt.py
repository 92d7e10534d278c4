"""Running another architecture's programs in a tree: the kernel's binfmt_misc and qemu-user-static.

A build for an architecture the host cannot run (arm64 on x86-64) runs the packages' maintainer
scripts, dracut, `mkosi.build` and `mkosi.postinst` inside the tree, so the kernel must hand that
architecture's binaries to qemu's user-mode emulator. qemu-user-static describes its handlers in
systemd's binfmt.d format; registered with the F flag, the kernel opens the emulator once, on the
host, so it works in a chroot or a container whose tree has no emulator of its own.

The host keeps its own handlers as they are: when it has a usable one (enabled, fix-binary) for the
architecture, builds use it. Otherwise a build registers mkosi's own, under a name of its own, for as
long as any build needs it: every build holds a shared flock on the architecture's lock file while it
runs, and the last one to leave (the only one that can then take the lock exclusively) removes the
handler. One left by a build killed with SIGKILL is removed when the next build for that
architecture ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkosi.architecture import Architecture
from mkosi.concurrency import OUTPUT_LOCKS, flock_polled
from mkosi.errors import MkosiError
from mkosi.run import run

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# Where qemu-user-static (Debian) puts its handler definitions, one file per architecture.
DEFINITIONS = Path("/usr/lib/binfmt.d")


@dataclass(frozen=True)
class Handler:
    """A binfmt_misc registration, as binfmt.d writes it: :name:type:offset:magic:mask:interpreter:flags."""

    name: str
    kind: str
    offset: str
    magic: str
    mask: str
    interpreter: str
    flags: str

    @classmethod
    def parse(cls, line: str) -> Handler:
        fields = line.strip().split(":")
        if len(fields) != 8 or fields[0]:
            raise ValueError(f"not a binfmt_misc registration: {line.strip()!r}")
        return cls(*fields[1:])

    def registration(self) -> str:
        return f":{self.name}:{self.kind}:{self.offset}:{self.magic}:{self.mask}:{self.interpreter}:{self.flags}"

    @property
    def magic_hex(self) -> str:
        """The magic as the kernel shows it back in a handler's file: plain hex digits."""
        return bytes(self.magic, "ascii").decode("unicode_escape").encode("latin-1").hex()


def own_name(architecture: Architecture) -> str:
    return f"mkosi-{architecture.qemu_user}"


def definition(architecture: Architecture) -> Handler:
    """qemu-user-static's handler for `architecture`, under mkosi's name, with the fix-binary flag;
    one line saying what to install when it is missing."""
    path = DEFINITIONS / f"{architecture.qemu_user}.conf"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        raise MkosiError(
            f"Architecture={architecture} on this {platform.machine()} host runs the tree's programs through "
            f"qemu's user-mode emulator, which is not installed ({path} is missing): apt install qemu-user-static"
        ) from None
    found = Handler.parse(lines[0])
    flags = found.flags if "F" in found.flags else found.flags + "F"
    return Handler(own_name(architecture), found.kind, found.offset, found.magic, found.mask, found.interpreter, flags)


def _fields(text: str) -> dict[str, str]:
    """A handler's file in binfmt_misc ("enabled", "flags: OCF", "magic 7f45...") as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    return fields


def usable_host_handler(wanted: Handler) -> str | None:
    """The name of a handler of the host's that already runs these binaries in any tree: enabled,
    the same magic, and fix-binary (without it the kernel looks for the emulator inside the tree)."""
    for entry in sorted(BINFMT_DIR.iterdir()):
        if entry.name in ("register", "status", wanted.name):
            continue
        with contextlib.suppress(OSError):
            fields = _fields(entry.read_text())
            if "enabled" in fields and fields.get("magic") == wanted.magic_hex and "F" in fields.get("flags", ""):
                return entry.name
    return None


async def _mount_binfmt_misc(log: Any) -> None:
    """binfmt_misc's file system, which a host without systemd-binfmt may not have mounted. It stays
    mounted: it holds no handler of its own, and other tools expect it there."""
    if not (BINFMT_DIR / "register").exists():
        await run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], log=log)


@contextlib.asynccontextmanager
async def emulation(architecture: Architecture, log: Any) -> AsyncIterator[None]:
    """The host runs `architecture`'s programs for as long as this is entered (see the module's
    docstring); nothing to do for the host's own architecture."""
    if architecture.native:
        yield
        return
    handler = definition(architecture)
    OUTPUT_LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(OUTPUT_LOCKS / f"binfmt-{architecture}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await flock_polled(fd, fcntl.LOCK_EX)
        await _mount_binfmt_misc(log)
        host = usable_host_handler(handler)
        if host is not None:
            log.info("running the tree's programs through the host's binfmt handler", handler=host)
        elif not (BINFMT_DIR / handler.name).exists():
            (BINFMT_DIR / "register").write_text(handler.registration())
            log.info("registered a binfmt handler for the build", handler=handler.name, interpreter=handler.interpreter)
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        _remove_if_last(fd, handler.name, log)
        os.close(fd)


def _remove_if_last(fd: int, name: str, log: Any) -> None:
    """Remove mkosi's handler unless another build still holds the lock (it will, when it leaves)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    if (BINFMT_DIR / name).exists():
        (BINFMT_DIR / name).write_text("-1")
        log.info("removed the build's binfmt handler", handler=name)
