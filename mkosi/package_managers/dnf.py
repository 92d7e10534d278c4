"""dnf (version 4): an install root filled from rpm-md repositories.

Everything dnf reads or writes is named explicitly: its configuration, repository definitions and
variables come from the build's workspace, never from the host's /etc/dnf or /etc/yum.repos.d; its
cache and logs go to the workspace; its history goes into the image, where dnf inside the image
will look for it. dnf 4 prefixes cachedir, logdir and persistdir with the install root when they
come from the configuration file, and takes them as host paths only from the command line; it
still creates the prefixed directories, empty, which are removed afterwards.

The same code installs into the image (the bootstrap) and into the build image (BuildPackages=):
only the root differs; configuration, cache and package pool are shared by both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mkosi import package_cache
from mkosi.context import Context
from mkosi.package_managers import (
    CURL_FAULTS,
    RETRIES,
    DownloadFailed,
    Fault,
    FaultWords,
    contained,
    download_failed,
    no_stray_copies,
    raise_missing,
    raise_untrusted,
)
from mkosi.package_managers.rpm import (
    Repository,
    Seeded,
    foreign_architecture,
    link_in,
    link_out,
    raise_no_index,
    repositories_named,
    rpm_environment,
)
from mkosi.run import CommandError, run

MISSING = (r"No match for argument: (\S+)", r"Unable to find a match: (\S+)")
# dnf's words for a repository without an index: the repository, and a line earlier the index's URL
# and that it is not there (not a timeout or a reset, which are the network's).
NO_INDEX = (
    r"Failed to download metadata for repo '(?P<repository>[^']+)'",
    r"(?:Status code: 404|Couldn't read a file:// file) for (?P<url>\S+/repodata/repomd\.xml)",
)
UNTRUSTED = (r"is not signed", r"GPG check FAILED", r"public key .* is not installed")
# dnf's words for every failed try of a package file (librepo's, through curl): "[MIRROR] FILE: CURL
# ERROR for URL [DETAIL]", or without " for URL" for a file that came but was not the one named.
MIRROR_FAILED = r"^\[MIRROR\] (\S+): (.*?)\s*$"
WITH_URL = r"^(.*) for (\S+) \[(.*)\]$"
FETCH_FAILURES = (
    *CURL_FAULTS,
    FaultWords(r"reported file Content-Length: (\d+), repository metadata states file length: (\d+)", Fault.short),
    FaultWords(r"checksum doesn't match", Fault.changed),
)


def config_text(context: Context, repositories: Sequence[Repository], *, workspace: Path) -> str:
    config = context.config
    main = [
        "[main]",
        f"reposdir={workspace / 'repos.d'}",
        f"varsdir={workspace / 'vars'}",
        # Packages stay in the cache after installation, so they can reach the shared pool.
        "keepcache=1",
        "install_weak_deps=0",
        f"gpgcheck={int(config.repository_key_check)}",
        "skip_if_unavailable=0",
        # A mirror that sends less than minrate (1000 bytes/s) for this long is given up on, and a
        # download tried again RETRIES times in all (0 would mean forever).
        f"timeout={config.mirror_timeout}",
        f"retries={RETRIES}",
    ]
    if not config.with_docs:
        main.append("tsflags=nodocs")
    sections = [r.section(key_check=config.repository_key_check, keep_packages=False) for r in repositories]
    return "\n".join(main) + "\n\n" + "\n".join(sections)


def download_failure(error: CommandError, timeout: int) -> DownloadFailed | None:
    """What dnf says it could not download, as one error naming the first file (its URL where dnf
    gives it), what went wrong on its last try and how many tries librepo made (it tries a mirror
    four times, whatever `retries=` says: that is for the downloads that failed all mirrors); None
    if dnf failed at something else."""
    tries: dict[str, list[tuple[str, str]]] = {}
    for line in error.tail:
        if match := re.match(MIRROR_FAILED, line):
            name, text = match[1], match[2]
            url, reason = name, text
            if located := re.match(WITH_URL, text):
                url, reason = located[2], f"{located[1]} [{located[3]}]"
            tries.setdefault(name, []).append((url, reason))
    if not tries:
        return None
    attempts = next(iter(tries.values()))
    url, reason = attempts[-1]
    return download_failed(
        url, reason, FETCH_FAILURES, tool="dnf", timeout=timeout, tries=len(attempts), others=len(tries) - 1
    )


def host_paths(root: Path, workspace: Path) -> dict[str, Path]:
    return {
        "cachedir": workspace / "cache",
        "logdir": workspace / "log",
        "persistdir": root / "var/lib/dnf",
    }


def command(context: Context, root: Path, configuration: Path, packages: Sequence[str]) -> list[str]:
    workspace = configuration.parent
    return [
        "dnf",
        "--assumeyes",
        "--noplugins",
        f"--config={configuration}",
        *(f"--setopt={name}={path}" for name, path in host_paths(root, workspace).items()),
        f"--installroot={root}",
        f"--releasever={context.config.release}",
        *([f"--forcearch={foreign}"] if (foreign := foreign_architecture(context.config)) else []),
        "install",
        *packages,
    ]


async def install(context: Context, root: Path, repositories: Sequence[Repository], packages: Sequence[str]) -> None:
    """Install `packages` into `root`, the image's tree or the build image's."""
    config = context.config
    workspace = context.workspace / "dnf"
    for directory in ("cache", "log", "repos.d", "vars"):
        (workspace / directory).mkdir(parents=True, exist_ok=True)
    configuration = workspace / "dnf.conf"
    configuration.write_text(config_text(context, repositories, workspace=workspace))
    pool = None
    seeded: Seeded = {}
    if config.cache_path is not None:
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        # Copies: dnf (librepo) writes the download of a file it refused into that very file, which
        # as a hard link would be the pool's, repaired in place while other builds may read it.
        seeded = await link_in(pool, workspace / "cache", copies=True)
    argv = command(context, root, configuration, packages)
    strays = [p for p in host_paths(root, workspace).values() if not p.is_relative_to(root)]
    try:
        with no_stray_copies(root, strays):
            await run(contained(argv), env=rpm_environment(context.workspace), log=context.log)
    except CommandError as error:
        where = repositories_named(config)
        raise_untrusted(error, UNTRUSTED, where)
        if failure := download_failure(error, config.mirror_timeout):
            raise failure from error
        raise_no_index(error, config, NO_INDEX)
        raise_missing(error, MISSING, where)
        raise
    if pool is not None:
        await link_out(context, workspace / "cache", pool, seeded, "dnf")
