"""pacman: an install root filled from Arch-style repositories.

pacman gets a configuration file of ours (never the host's /etc/pacman.conf) that names every path
it uses: the root and its package database, a cache and log in the workspace, and a keyring of its
own in the workspace, populated from the Arch Linux keyring the host has installed (and kept in the
package cache, named after the keyring files, for the next build).

The same code installs into the image (the bootstrap) and into the build image (BuildPackages=):
each gets a configuration file naming its root; cache and keyring are shared by both.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

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
    raise_missing,
    raise_untrusted,
)
from mkosi.run import CommandError, run

MISSING = (r"error: target not found: (\S+)",)
# A repository without signatures makes pacman fail to fetch the .sig files it requires.
UNTRUSTED = (
    r"missing required signature",
    r"failed retrieving file '[^']+\.sig'",
    r"invalid or corrupted package \(PGP",
    # Signed by a key the keyring does not have.
    r"required key missing from keyring",
    r"signature from .* is (?:invalid|unknown trust|marginal trust)",
)
# Packages must be signed by a trusted key; databases are signed by few mirrors, so optional.
SIGNED = "Required DatabaseOptional"
# pacman's words for a package file that is not what the database names (checksum, signature);
# --noconfirm answers yes to deleting it, and the transaction fails.
CORRUPTED = r"File (\S+) is corrupted \((.*)\)\.$"
# pacman's words for every failed try of a file: its name and the mirror's host, not its URL.
FETCH_FAILED = r"^error: failed retrieving file '([^']+)' from \S+ : (.*?)\s*$"
# pacman gives up on a mirror that sent less than 1 byte/s for LIMIT seconds (14 s measured for a
# stall, pacman 6.0), a limit of its own that no option changes (--disable-download-timeout only
# removes it): MirrorTimeout= cannot apply. XferCommand= with curl could honour it, but pacman then
# names neither the file nor the mirror in its error.
LIMIT = 10
FETCH_FAILURES = (
    FaultWords(r"Less than 1 bytes/sec transferred the last (\d+) seconds", Fault.stalled_fixed),
    *CURL_FAULTS,
    # A package whose checksum is not the database's (truncated, changed); its signature is UNTRUSTED.
    FaultWords(r"invalid or corrupted package \(checksum\)", Fault.changed),
)


@dataclass(frozen=True)
class Repository:
    name: str
    # May contain pacman's $repo and $arch.
    server: str


def config_text(context: Context, root: Path, repositories: Sequence[Repository], *, workspace: Path) -> str:
    config = context.config
    options = [
        "[options]",
        f"RootDir = {root}",
        f"DBPath = {root / 'var/lib/pacman'}/",
        f"CacheDir = {workspace / 'cache'}/",
        f"LogFile = {workspace / 'pacman.log'}",
        f"GPGDir = {workspace / 'gnupg'}/",
        f"HookDir = {root / 'etc/pacman.d/hooks'}/",
        f"Architecture = {config.architecture.pacman}",
        f"SigLevel = {SIGNED if config.repository_key_check else 'Never'}",
    ]
    if not config.with_docs:
        options.append("NoExtract = usr/share/doc/* usr/share/man/* usr/share/info/*")
    # pacman tries a file that failed at the next Server= of its repository (resuming it), and skips
    # a mirror after three failures: each mirror is named 1 + RETRIES times, so that it is tried that
    # often, and no more.
    sections = [f"[{r.name}]\n" + f"Server = {r.server}\n" * (1 + RETRIES) for r in repositories]
    return "\n".join(options) + "\n\n" + "\n".join(sections)


def keyring_commands(configuration: Path, gnupg: Path, keyring: str) -> list[list[str]]:
    base = ["pacman-key", f"--config={configuration}", f"--gpgdir={gnupg}"]
    return [[*base, "--init"], [*base, "--populate", keyring]]


def command(configuration: Path, packages: Sequence[str]) -> list[str]:
    # --needed: a package named twice (base packages and Packages=) is installed once.
    return ["pacman", f"--config={configuration}", "--noconfirm", "--needed", "-Sy", *packages]


KEYRINGS = Path("/usr/share/keyrings")


def keyring_cache(cache: Path, keyring: str, keyrings: Path = KEYRINGS) -> Path:
    """Where a populated pacman keyring is kept, named after the keyring files it was made from."""
    digest = hashlib.sha256()
    for path in sorted(keyrings.glob(f"{keyring}*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return cache / "keyrings" / f"pacman-{keyring}-{digest.hexdigest()[:16]}"


def _copy_keyring(source: Path, destination: Path) -> None:
    # gpg-agent's sockets and lock files belong to the process that made them.
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))


def fingerprints(show_keys: str) -> list[str]:
    """The primary keys' fingerprints in `gpg --with-colons --show-keys` output."""
    result: list[str] = []
    primary = False
    for line in show_keys.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary:
            result.append(fields[9])
            primary = False
    return result


async def trust_keys(context: Context, configuration: Path, gnupg: Path, keys: Sequence[Path]) -> None:
    """A keyring trusting exactly `keys` (RepositoryKey=), as pacman-key's --populate would trust a
    distribution keyring's: added, then signed locally so pacman accepts what they sign."""
    base = ["pacman-key", f"--config={configuration}", f"--gpgdir={gnupg}"]
    await run(contained([*base, "--init"]), log=context.log)
    for key in keys:
        await run(contained([*base, "--add", str(key)]), log=context.log)
        shown = await run(
            ["gpg", f"--homedir={gnupg}", "--batch", "--with-colons", "--show-keys", key],
            capture_stdout=True,
            log=context.log,
        )
        for fingerprint in fingerprints(shown.stdout):
            await run(contained([*base, "--lsign-key", fingerprint]), log=context.log)


async def prepare_keyring(context: Context, configuration: Path, gnupg: Path, keyring: str) -> None:
    """Populate pacman's keyring, or reuse one populated from the same keyring files.

    Populating takes ten seconds of gpg work for each build otherwise. The build image's install
    finds the keyring the bootstrap populated in the same workspace.
    """
    if gnupg.is_dir():
        return
    if context.config.repository_keys:
        await trust_keys(context, configuration, gnupg, context.config.repository_keys)
        return
    cache_path = context.config.cache_path
    cached = keyring_cache(cache_path, keyring) if cache_path is not None else None
    if cached is not None and cached.is_dir():
        await anyio.to_thread.run_sync(_copy_keyring, cached, gnupg)
        return
    for argv in keyring_commands(configuration, gnupg, keyring):
        await run(contained(argv), log=context.log)
    if cached is not None:
        staging = cached.with_name(f".{cached.name}.{os.getpid()}")
        await anyio.to_thread.run_sync(_copy_keyring, gnupg, staging)
        try:
            os.rename(staging, cached)
        except OSError:
            # Another build stored the same keyring first.
            shutil.rmtree(staging, ignore_errors=True)


def corrupted_files(error: CommandError) -> dict[str, str]:
    """The package files pacman found corrupted, by name, each with what pacman found wrong."""
    return {Path(m[1]).name: m[2] for line in error.tail if (m := re.search(CORRUPTED, line.strip()))}


def file_url(name: str, repositories: Sequence[Repository], sync: Path, architecture: str) -> str:
    """The URL of `name`, a file pacman names without its repository: a database (core.db,
    core.db.sig) is its repository's; a package is in the repository whose database (in `sync`,
    as pacman just downloaded it) has it. `name` itself if no repository has it."""
    for repository in repositories:
        url = repository.server.replace("$repo", repository.name).replace("$arch", architecture)
        if name.split(".")[0] == repository.name or _in_database(sync / f"{repository.name}.db", name):
            return f"{url.rstrip('/')}/{name}"
    return name


def _in_database(database: Path, name: str) -> bool:
    """Whether a package file called `name` is in a sync database: its entries are directories
    named NAME-VERSION-RELEASE, and the file NAME-VERSION-RELEASE-ARCH.pkg.tar.*."""
    if not database.is_file():
        return False
    with tarfile.open(database) as archive:
        return any(name.startswith(f"{entry.name.rstrip('/')}-") for entry in archive if entry.isdir())


def download_failure(
    error: CommandError, repositories: Sequence[Repository], sync: Path, architecture: str
) -> DownloadFailed | None:
    """What pacman says it could not download, as one error naming the first file's URL, what went
    wrong on its last try and how many tries pacman made; None if pacman failed at something else.

    A file pacman found corrupted is one that came damaged twice: _install ran pacman once more."""
    tries: dict[str, list[str]] = {}
    for line in error.tail:
        if match := re.match(FETCH_FAILED, line):
            tries.setdefault(match[1], []).append(match[2])
    for name, why in corrupted_files(error).items():
        tries.setdefault(name, ["", why])
    if not tries:
        return None
    name, reasons = next(iter(tries.items()))
    return download_failed(
        file_url(name, repositories, sync, architecture),
        reasons[-1],
        FETCH_FAILURES,
        tool="pacman",
        timeout=LIMIT,
        tries=len(reasons),
        others=len(tries) - 1,
    )


async def _install(context: Context, configuration: Path, packages: Sequence[str], pool: Path | None) -> None:
    """pacman's install, and once more after it refused a corrupted package file: the pool's copy,
    damaged on the disk (left in the pool, it would fail every later build), or what the mirror
    sent. pacman has deleted its copy, so the second run downloads it again."""
    try:
        await run(contained(command(configuration, packages)), log=context.log)
    except CommandError as error:
        corrupted = corrupted_files(error)
        if not corrupted:
            raise
        for name, why in corrupted.items():
            if pool is not None and (pool / name).is_file():
                context.log.warning(f"package pool file {pool / name} is damaged ({why}); downloading it again")
            else:
                context.log.warning(f"the mirror sent {name} damaged ({why}); downloading it once more")
        if pool is not None:
            await anyio.to_thread.run_sync(package_cache.drop, pool, corrupted)
        await run(contained(command(configuration, packages)), log=context.log)


async def install(
    context: Context, root: Path, repositories: Sequence[Repository], packages: Sequence[str], *, keyring: str
) -> None:
    """Install `packages` into `root`, the image's tree or the build image's."""
    config = context.config
    workspace = context.workspace / "pacman"
    gnupg = workspace / "gnupg"
    (workspace / "cache").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/pacman").mkdir(parents=True, exist_ok=True)
    configuration = workspace / f"pacman-{root.name}.conf"
    configuration.write_text(config_text(context, root, repositories, workspace=workspace))
    pool = None
    if config.cache_path is not None:
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        await anyio.to_thread.run_sync(package_cache.link_in, pool, workspace / "cache")
    try:
        if config.repository_key_check:
            await prepare_keyring(context, configuration, gnupg, keyring)
        await _install(context, configuration, packages, pool)
    except CommandError as error:
        where = f"the repositories of {config.distribution}"
        # First: an unsigned repository is a .sig file that failed to come, too.
        raise_untrusted(error, UNTRUSTED, where)
        if failure := download_failure(error, repositories, root / "var/lib/pacman/sync", config.architecture.pacman):
            raise failure from error
        raise_missing(error, MISSING, where)
        raise
    if pool is not None:
        await anyio.to_thread.run_sync(package_cache.link_out, workspace / "cache", pool)
