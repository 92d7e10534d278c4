"""SHA256SUMS and its detached gpg signature: the release files systemd's importer verifies.

Shared by single builds (--checksum, --sign) and by release matrices (matrix/release.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from mkosi.concurrency import cpu_heavy
from mkosi.run import run


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def describe_artifact(path: Path, name: str | None = None) -> Artifact:
    """The file's digest and size, under `name` when it is still waiting under a temporary one."""
    async with cpu_heavy():
        digest = await anyio.to_thread.run_sync(sha256_file, path)
    return Artifact(name or path.name, path.stat().st_size, digest)


def checksums(artifacts: Sequence[Artifact]) -> str:
    """coreutils' binary-mode lines as systemd's importer reads them, sorted bytewise (LC_ALL=C sort)."""
    return "".join(sorted((f"{a.sha256} *{a.name}\n" for a in artifacts), key=str.encode))


async def _agent_running(log: Any) -> bool:
    # gpg-connect-agent --no-autostart succeeds either way: ask the agent's socket itself.
    found = await run(["gpgconf", "--list-dirs", "agent-socket"], capture_stdout=True, log=log)
    path = found.stdout.strip()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def gpg_home() -> Path:
    """Where gpg keeps the keys it signs with: $GNUPGHOME, else ~/.gnupg."""
    return Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")


def gpg_home_problem() -> str | None:
    """Why the gpg home must not be signed from, or None. gpg itself only warns ("unsafe
    permissions on homedir") and signs: whoever else can read it can sign as the release."""
    home = gpg_home()
    try:
        st = home.stat()
    except OSError:
        return None  # gpg says itself that it has no key
    if st.st_uid != os.geteuid():
        return f"the gpg home {home} belongs to another user (uid {st.st_uid}), who can read its secret keys"
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        return f"the gpg home {home} is accessible by group or others (mode {mode:04o}) (chmod 700 it)"
    return None


def signing_time(colons: str, epoch: int) -> int:
    """The signature's time for SourceDateEpoch=: the epoch, or the creation of the newest of the
    key's parts when the key is younger (gpg will not sign with a key from the future). Either way
    it only depends on the key, so an RSA or EdDSA signature of the same sums is the same bytes."""
    created = [int(f[5]) for line in colons.splitlines() if (f := line.split(":"))[0] in ("sec", "ssb") and f[5]]
    return max([epoch, *created])


async def _pinned_time(key: str | None, epoch: int | None, log: Any) -> list[str]:
    if epoch is None:
        return []
    listing = await run(
        ["gpg", "--batch", "--with-colons", "--list-secret-keys", *([key] if key else [])], capture_stdout=True, log=log
    )
    # The trailing "!" freezes gpg's clock there instead of starting it from there.
    return [f"--faked-system-time={signing_time(listing.stdout, epoch)}!"]


async def sign(sums: Path, key: str | None, log: Any, signature: Path | None = None, epoch: int | None = None) -> Path:
    """A binary detached signature of `sums` (default: next to it, with .gpg appended), made at
    the time signing_time() picks when `epoch` (SourceDateEpoch=) is given.

    gpg starts an agent that outlives it; one that was not running before is stopped again, so
    that a build with a temporary GNUPGHOME leaves no daemon (and no socket in that directory).
    """
    signature = signature or sums.with_name(sums.name + ".gpg")
    started_agent = not await _agent_running(log)
    try:
        await run(
            [
                "gpg",
                "--batch",
                "--yes",
                *await _pinned_time(key, epoch, log),
                "--detach-sign",
                *(["--local-user", key] if key else []),
                "--output",
                signature,
                sums,
            ],
            log=log,
        )
    finally:
        if started_agent:
            with anyio.CancelScope(shield=True):
                await run(["gpgconf", "--kill", "gpg-agent"], check=False, log=log)
    return signature
