"""pacman: an install root filled from Arch-style repositories.

pacman gets a configuration file of ours (never the host's /etc/pacman.conf) that names every path
it uses: the root and its package database, a cache and log in the workspace, and a keyring of its
own in the workspace, populated from the Arch Linux keyring the host has installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from mkosi import package_cache
from mkosi.context import Context
from mkosi.package_managers import raise_missing, raise_untrusted
from mkosi.run import CommandError, run

ARCHITECTURES = {"x86-64": "x86_64", "arm64": "aarch64"}
MISSING = (r"error: target not found: (\S+)",)
# A repository without signatures makes pacman fail to fetch the .sig files it requires.
UNTRUSTED = (
    r"missing required signature",
    r"failed retrieving file '[^']+\.sig'",
    r"invalid or corrupted package \(PGP",
)
# Packages must be signed by a trusted key; databases are signed by few mirrors, so optional.
SIGNED = "Required DatabaseOptional"


@dataclass(frozen=True)
class Repository:
    name: str
    # May contain pacman's $repo and $arch.
    server: str


def config_text(context: Context, repositories: Sequence[Repository], *, workspace: Path) -> str:
    config = context.config
    options = [
        "[options]",
        f"RootDir = {context.root}",
        f"DBPath = {context.root / 'var/lib/pacman'}/",
        f"CacheDir = {workspace / 'cache'}/",
        f"LogFile = {workspace / 'pacman.log'}",
        f"GPGDir = {workspace / 'gnupg'}/",
        f"HookDir = {context.root / 'etc/pacman.d/hooks'}/",
        f"Architecture = {ARCHITECTURES[config.architecture]}",
        f"SigLevel = {SIGNED if config.repository_key_check else 'Never'}",
    ]
    if not config.with_docs:
        options.append("NoExtract = usr/share/doc/* usr/share/man/* usr/share/info/*")
    sections = [f"[{r.name}]\nServer = {r.server}\n" for r in repositories]
    return "\n".join(options) + "\n\n" + "\n".join(sections)


def keyring_commands(configuration: Path, gnupg: Path, keyring: str) -> list[list[str]]:
    base = ["pacman-key", f"--config={configuration}", f"--gpgdir={gnupg}"]
    return [[*base, "--init"], [*base, "--populate", keyring]]


def command(configuration: Path, packages: Sequence[str]) -> list[str]:
    # --needed: a package named twice (base packages and Packages=) is installed once.
    return ["pacman", f"--config={configuration}", "--noconfirm", "--needed", "-Sy", *packages]


async def install(
    context: Context, repositories: Sequence[Repository], base_packages: Sequence[str], *, keyring: str
) -> None:
    config = context.config
    workspace = context.workspace / "pacman"
    (workspace / "cache").mkdir(parents=True, exist_ok=True)
    (context.root / "var/lib/pacman").mkdir(parents=True, exist_ok=True)
    configuration = workspace / "pacman.conf"
    configuration.write_text(config_text(context, repositories, workspace=workspace))
    if config.repository_key_check:
        for argv in keyring_commands(configuration, workspace / "gnupg", keyring):
            await run(argv, log=context.log)
    pool = None
    if config.cache_path is not None:
        pool = package_cache.pool_for(
            config.cache_path, config.distribution, config.release, config.architecture
        )
        await anyio.to_thread.run_sync(package_cache.link_in, pool, workspace / "cache")
    try:
        await run(command(configuration, [*base_packages, *config.packages]), log=context.log)
    except CommandError as error:
        where = f"the repositories of {config.distribution}"
        raise_untrusted(error, UNTRUSTED, where)
        raise_missing(error, MISSING, where)
        raise
    finally:
        if config.repository_key_check:
            # gpg-agent leaves the process group it was started in; it must not outlive the build.
            kill: list[str | Path] = ["gpgconf", "--homedir", workspace / "gnupg", "--kill", "all"]
            await run(kill, check=False, log=context.log)
    if pool is not None:
        await anyio.to_thread.run_sync(package_cache.link_out, workspace / "cache", pool)
