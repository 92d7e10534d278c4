"""What dnf and zypper share: rpm's database location and repository descriptions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from mkosi import package_cache
from mkosi.config import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.run import CommandError

# Where Fedora and openSUSE keep the rpm database. Debian's rpm defaults to ~/.rpmdb, which would put
# the image's package database in the build host's home directory.
RPMDB = "/usr/lib/sysimage/rpm"


@dataclass(frozen=True)
class Repository:
    """One rpm-md repository: where to find it and which keys sign it."""

    id: str
    name: str
    baseurl: str | None = None
    metalink: str | None = None
    gpgkeys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.baseurl is None) == (self.metalink is None):
            raise ValueError(f"repository {self.id} needs exactly one of baseurl and metalink")

    def section(self, *, key_check: bool, keep_packages: bool) -> str:
        """The repository as a .repo file section, understood by both dnf and zypper."""
        lines = [f"[{self.id}]", f"name={self.name}", "enabled=1", f"gpgcheck={int(key_check)}"]
        lines.append(f"baseurl={self.baseurl}" if self.baseurl else f"metalink={self.metalink}")
        if key_check and self.gpgkeys:
            lines.append(f"gpgkey={' '.join(self.gpgkeys)}")
        if keep_packages:
            lines.append("keeppackages=1")
        return "\n".join(lines) + "\n"


def foreign_architecture(config: Config) -> str | None:
    """rpm's name for the image's architecture when it is not the host's: dnf and libzypp take the
    architecture they choose packages for, and let rpm install, from the host unless told."""
    return None if config.architecture.native else config.architecture.rpm


def _release_named(config: Config) -> str:
    """The distribution release an error is about, with the architecture when it is not the host's."""
    foreign = foreign_architecture(config)
    return f"{config.distribution} {config.release}" + (f" for {foreign}" if foreign else "")


def repositories_named(config: Config) -> str:
    """The repositories a package was not found in, as an error names them."""
    return f"the repositories of {_release_named(config)}"


class NoPackageIndex(MkosiError):
    """A repository URL with no rpm-md index: a mirror without this release or architecture."""


def raise_no_index(error: CommandError, config: Config, patterns: Sequence[str]) -> None:
    """Turn a package manager's failure to find a repository's index into one line naming the
    repository and the URL. `patterns` name the groups `repository` and `url`, on one line or on
    lines of their own; both must be found."""
    found: dict[str, str] = {}
    for line in error.tail:
        for pattern in patterns:
            if match := re.search(pattern, line):
                found.update({name: value for name, value in match.groupdict().items() if value})
    if "repository" in found and "url" in found:
        raise NoPackageIndex(
            f"no package index for repository {found['repository']} of {_release_named(config)} at {found['url']}"
        ) from error


def rpm_environment(workspace: Path) -> dict[str, str]:
    """An environment whose rpm macros put the image's rpm database where the distribution has it.

    rpm reads ~/.rpmmacros: through HOME, the rpm library that dnf and zypper load is configured
    without touching the host's /etc/rpm.
    """
    home = workspace / "rpm-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_dbpath {RPMDB}\n")
    return {"HOME": str(home)}


# Each repository's package files as link_in left them, by repository.
Seeded = dict[str, dict[str, package_cache.Stamp]]


def _link_in(pool: Path, cache: Path, packages: str, copies: bool) -> Seeded:
    seeded: Seeded = {}
    for repository in pool.iterdir() if pool.is_dir() else ():
        if repository.is_dir():
            directory = cache / repository.name / packages
            package_cache.link_in(repository, directory, copies=copies)
            seeded[repository.name] = package_cache.stamps(directory)
    return seeded


# A pool file the package manager refused and downloaded again: its path, its SHA-256 and the download's.
Replaced = tuple[Path, str, str]


def _link_out(cache: Path, pool: Path, packages: str, seeded: Seeded) -> list[Replaced]:
    replaced: list[Replaced] = []
    for repository in cache.iterdir() if cache.is_dir() else ():
        directory, pooled = repository / packages, pool / repository.name
        if directory.is_dir():
            rejected = package_cache.rejected(directory, pooled, seeded.get(repository.name, {}))
            package_cache.link_out(directory, pooled, rejected)
            replaced += [(pooled / name, bad, good) for name, (bad, good) in rejected.items()]
    return replaced


async def link_in(pool: Path, cache: Path, packages: str = "packages", *, copies: bool = False) -> Seeded:
    """Seed a package manager's per-repository package directories from the shared pool (with
    `copies`, never as hard links into it).

    The pool mirrors the cache's layout one level deep (a directory per repository, named as the
    package manager names it), so packages of different mirrors never mix.
    """
    return await anyio.to_thread.run_sync(_link_in, pool, cache, packages, copies)


async def link_out(
    context: Context, cache: Path, pool: Path, seeded: Seeded, tool: str, packages: str = "packages"
) -> None:
    """Put new downloads into the pool, and `tool`'s downloads of pool files it refused (not the
    repository's checksum, which the download has) in place of those, each with a warning."""
    for path, bad, good in await anyio.to_thread.run_sync(_link_out, cache, pool, packages, seeded):
        context.log.warning(
            package_cache.damaged_warning(
                path, bad, good, named_by="the repository's metadata", then=f"replaced by {tool}'s download"
            )
        )
