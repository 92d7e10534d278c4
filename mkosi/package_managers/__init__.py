"""One module per package manager, each driving its tool the way it is meant to be used for an
install root: configuration, caches, keyrings and logs live in the build's workspace or in the image,
never on the build host.

A distribution module picks one of these and hands it its mirror, repositories, release and package
names. What the modules share lives here: reporting a package that does not exist by name, or a
file the mirror did not deliver.
"""

from __future__ import annotations

import contextlib
import enum
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mkosi.errors import MkosiError
from mkosi.run import CommandError


class NoSuchPackage(MkosiError):
    """The repositories have no package of this name."""


class UntrustedRepository(MkosiError):
    """Signature checking is on and what the repository serves is not signed by a trusted key."""


# How many more times a package manager tries a file that did not come: a mirror that failed three
# times in a row is broken, and each try of a stalled one costs MirrorTimeout=.
RETRIES = 2


class Fault(enum.Enum):
    """What went wrong with a download, whichever package manager saw it: what the user is told,
    formatted with the groups of the tool's pattern and the timeout."""

    stalled = "the mirror sent nothing for {timeout} s (MirrorTimeout={timeout})"
    # A limit the package manager sets itself (pacman's), which MirrorTimeout= cannot change.
    stalled_fixed = "the mirror sent nothing for {0} s (the package manager's own limit, not MirrorTimeout=)"
    reset = "the mirror reset the connection"
    closed = "the mirror closed the connection before the end of the file"
    unreachable = "could not connect to the mirror"
    short = "the mirror sent {0} bytes of {1}"
    changed = "the file has another SHA-256 than the package index names"

    @property
    def network(self) -> bool:
        """A failure of the network, worth another try at once; the others brought a whole answer
        that was not the file, which the same request is likely to bring again."""
        return self not in (Fault.short, Fault.changed)


@dataclass(frozen=True)
class FaultWords:
    """How one package manager words a fault: a pattern matched against its reason."""

    pattern: str
    fault: Fault


# curl's words for each network fault, which dnf (through librepo), zypper (through libzypp) and
# pacman pass on.
CURL_FAULTS = (
    FaultWords(r"Operation too slow|Timeout was reached", Fault.stalled),
    FaultWords(r"Connection reset by peer", Fault.reset),
    FaultWords(r"transfer closed with \d+ bytes remaining|Transferred a partial file", Fault.closed),
    FaultWords(r"Couldn't connect|Failed to connect|Connection refused", Fault.unreachable),
)


class DownloadFailed(MkosiError):
    """A file did not come from the mirror: `what` happened on the last of `tries` tries (the
    `fault`, if known), which the package manager `tool` put in its own words as `reason`; `others`
    more files failed too."""

    def __init__(
        self,
        url: str,
        what: str,
        *,
        tool: str,
        reason: str,
        fault: Fault | None = None,
        tries: int = 1,
        others: int = 0,
    ) -> None:
        self.url = url
        self.what = what
        self.tool = tool
        self.reason = reason
        self.fault = fault
        self.tries = tries
        self.others = others
        tried = f", after {tries} tries" if tries > 1 else ""
        more = f", and {others} more file{'s' if others > 1 else ''} (see the log)" if others else ""
        super().__init__(f"could not download {url}: {what}{tried}{more} ({tool}: {reason})")

    @property
    def network(self) -> bool:
        """Whether the network failed (worth another try), as far as the tool's words tell."""
        return self.fault is not None and self.fault.network

    def tried(self, tries: int) -> DownloadFailed:
        """The same failure after `tries` tries."""
        return type(self)(
            self.url, self.what, tool=self.tool, reason=self.reason, fault=self.fault, tries=tries, others=self.others
        )


class DamagedDownload(DownloadFailed):
    """The mirror sent the whole answer, but not the file its package index names (truncated, changed)."""


def download_failed(
    url: str, reason: str, words: Iterable[FaultWords], *, tool: str, timeout: int, tries: int = 1, others: int = 0
) -> DownloadFailed:
    """The error for `url`, which `tool` failed to download after `tries` tries, giving `reason`."""
    for word in words:
        if match := re.search(word.pattern, reason):
            what = word.fault.value.format(*match.groups(), timeout=timeout)
            kind = DownloadFailed if word.fault.network else DamagedDownload
            return kind(url, what, tool=tool, reason=reason, fault=word.fault, tries=tries, others=others)
    return DownloadFailed(url, f"{tool} could not fetch it", tool=tool, reason=reason, tries=tries, others=others)


def missing_packages(error: CommandError, patterns: Iterable[str]) -> list[str]:
    """The package names a failed command complained about, using each tool's own wording."""
    names: list[str] = []
    for line in error.tail:
        for pattern in patterns:
            if (match := re.search(pattern, line)) and match.group(1) not in names:
                names.append(match.group(1))
    return names


def raise_missing(error: CommandError, patterns: Iterable[str], where: str) -> None:
    """Turn a package manager's failure to find packages into an error that names them."""
    if names := missing_packages(error, patterns):
        plural = "s" if len(names) > 1 else ""
        raise NoSuchPackage(f"no package{plural} {', '.join(names)} in {where}") from error


def contained(argv: Sequence[str | Path]) -> list[str | Path]:
    """`argv` in a PID namespace of its own, which ends, with everything in it, when it exits.

    The signature checks of dnf, zypper and pacman start gpg-agent, which leaves the process group
    that mkosi.run ends after a command; it cannot leave a PID namespace.
    """
    return ["unshare", "--pid", "--fork", "--kill-child", *argv]


def raise_untrusted(error: CommandError, patterns: Iterable[str], where: str) -> None:
    """Turn a package manager's signature failure into an error that says what to do about it."""
    for line in error.tail:
        if any(re.search(pattern, line) for pattern in patterns):
            raise UntrustedRepository(
                f"{where} are not signed by a trusted key ({line.strip()}); "
                "RepositoryKey= names the key of your own mirror, "
                "RepositoryKeyCheck=no turns checking off, for unsigned local repositories"
            ) from error


@contextlib.contextmanager
def no_stray_copies(root: Path, host_paths: Iterable[Path]) -> Iterator[None]:
    """Remove what a package manager writes below `root` at the paths of `host_paths`.

    dnf 4 given host paths as well as an install root still creates those paths inside the root and
    writes logs and cache state there. Whatever appears inside the root at one of those paths (all
    of them private to this build) is removed, then the directories made for it if they are empty,
    so a directory the image has (its /tmp, say) is never touched.
    """
    new: list[Path] = []
    copies: list[Path] = []
    for path in host_paths:
        relative = path.relative_to("/").parts
        copies.append(root.joinpath(*relative))
        for depth in range(1, len(relative) + 1):
            candidate = root.joinpath(*relative[:depth])
            if not candidate.exists() and candidate not in new:
                new.append(candidate)
    try:
        yield
    finally:
        for copy in copies:
            if copy in new:
                shutil.rmtree(copy, ignore_errors=True)
        for directory in sorted(new, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
