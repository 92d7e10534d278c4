"""apt, through mmdebstrap: Debian and its derivatives bootstrapped from a list of apt sources.

mmdebstrap runs apt with a configuration of its own inside the new tree, so the host's apt sources,
keyrings and caches are never read or written: only the keyrings named here are trusted.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from mkosi import package_cache
from mkosi.context import Context
from mkosi.package_managers import raise_missing, raise_untrusted
from mkosi.run import CommandError, run

ARCHITECTURES = {"x86-64": "amd64", "arm64": "arm64"}
# apt's and mmdebstrap's wording for a package that no source has.
MISSING = (
    r"Unable to locate package (\S+)",
    r"Package '?([^' ]+)'? has no installation candidate",
    r"Couldn't find any package by (?:glob|regex) '([^']+)'",
)
# apt's wording for an archive whose Release file is unsigned, signed by an unknown key, or changed.
UNTRUSTED = (r"NO_PUBKEY", r"BADSIG", r"is not signed", r"signatures were invalid")


@dataclass(frozen=True)
class Source:
    """One apt source line: deb URI SUITE COMPONENTS."""

    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self, trusted: bool) -> str:
        options = "[trusted=yes] " if trusted else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True)
class Bootstrap:
    """What a distribution asks of mmdebstrap."""

    sources: tuple[Source, ...]
    # Everything to install on top of the essential packages, the user's packages included.
    packages: tuple[str, ...]
    # Empty when signature checking is off: then every source is trusted as is.
    keyrings: tuple[Path, ...]
    # Further mmdebstrap options (hooks) the distribution needs.
    hooks: tuple[str, ...] = ()
    # Keys the image's own apt trusts too (RepositoryKey=): mmdebstrap copies no keyring into the
    # tree, and apt in the image (BuildPackages=, later updates) needs them for the same sources.
    image_keys: tuple[Path, ...] = ()


ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


def key_hooks(keys: tuple[Path, ...]) -> list[str]:
    """mmdebstrap hooks putting `keys` into the tree's /etc/apt/trusted.gpg.d, under names apt reads:
    .asc for armored keys, .gpg for binary keyrings, whatever the files are called."""
    hooks = ['--setup-hook=mkdir -p "$1/etc/apt/trusted.gpg.d"']
    for number, key in enumerate(keys):
        suffix = "asc" if key.read_bytes().lstrip().startswith(ARMOR) else "gpg"
        target = f'"$1/etc/apt/trusted.gpg.d/mkosi-repository-key-{number}.{suffix}"'
        hooks.append(f"--setup-hook=cp {shlex.quote(str(key))} {target} && chmod 644 {target}")
    return hooks


def command(context: Context, bootstrap: Bootstrap) -> list[str]:
    config = context.config
    argv = [
        "mmdebstrap",
        # Even as root: a private mount namespace, so an interrupted bootstrap leaves no mounts behind.
        "--mode=unshare",
        "--variant=minbase",
        f"--architectures={ARCHITECTURES[config.architecture]}",
        f"--include={','.join(bootstrap.packages)}",
        *bootstrap.hooks,
        *(key_hooks(bootstrap.image_keys) if bootstrap.image_keys else []),
    ]
    argv += [f"--keyring={keyring}" for keyring in bootstrap.keyrings]
    if config.cache_path is not None:
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        hook = f"{sys.executable} -m mkosi.package_cache"
        argv += [
            # Keep the packages the bootstrap installs first, so they reach the pool too.
            "--skip=essential/unlink",
            "--skip=download/empty",
            f'--setup-hook={hook} link-in {pool} "$1/var/cache/apt/archives"',
            f'--customize-hook={hook} link-out "$1/var/cache/apt/archives" {pool}',
        ]
    trusted = not bootstrap.keyrings
    return [*argv, config.release, str(context.root), *(s.line(trusted) for s in bootstrap.sources)]


async def install(context: Context, bootstrap: Bootstrap) -> None:
    try:
        await run(command(context, bootstrap), log=context.log)
    except CommandError as error:
        config = context.config
        raise_untrusted(error, UNTRUSTED, f"the archives of {config.distribution} {config.release}")
        raise_missing(error, MISSING, f"{config.distribution} {config.release}")
        raise
