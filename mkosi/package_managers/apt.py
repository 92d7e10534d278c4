"""apt inside an existing Debian or Ubuntu tree: installing packages after the bootstrap.

apt runs in the tree itself (systemd-nspawn), with the sources and keys the bootstrap configured
there, so nothing of the host's apt is used. The package pool is linked in and out around it, as
for the bootstrap: only the pool files that have the SHA-256 the package index names.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from mkosi import package_cache
from mkosi.context import Context
from mkosi.nspawn import NSPAWN_BUILD, NSPAWN_ENV
from mkosi.package_managers import raise_missing
from mkosi.package_managers.apt_bootstrap import (
    ARCHIVES,
    MISSING,
    link_in_verified,
    mirror_options,
    once_more_if_damaged,
    parse_print_uris,
    raise_download_failure,
)
from mkosi.run import CommandError, run

APT_OPTIONS = ["-o", "APT::Keep-Downloaded-Packages=true", "-o", "Dpkg::Use-Pty=false", "-q"]
# What the shell in the tree runs, "$@" being the packages. Listing takes the same options as
# installing, so that it lists the same files.
UPDATE = "{apt_get} update"
LIST = '{apt_get} install --print-uris -qq -o Acquire::ForceHash=SHA256 --no-install-recommends -- "$@"'
INSTALL = 'DEBIAN_FRONTEND=noninteractive {apt_get} install -y --no-install-recommends -- "$@"'


def apt_get(timeout: int) -> str:
    """apt-get as the shell in the tree runs it, with the same limits for a failing mirror as the
    bootstrap's apt."""
    acquire = [word for name, value in mirror_options(timeout).items() for word in ("-o", f"{name}={value}")]
    return shlex.join(["apt-get", *APT_OPTIONS, *acquire])


async def _in_tree(context: Context, root: Path, script: str, packages: Sequence[str], capture: bool = False) -> str:
    config = context.config
    # Without a terminal nspawn gives the container one of its own, whose output all comes out on
    # standard output: a captured listing would swallow apt's errors.
    console = ["--console=pipe"] if capture else []
    command = [*NSPAWN_BUILD, *console, f"--directory={root}", "/bin/sh", "-c", script, "sh", *packages]
    try:
        result = await run(command, env=NSPAWN_ENV, capture_stdout=capture, log=context.log)
    except CommandError as error:
        raise_download_failure(error, config.mirror_timeout)
        raise_missing(error, MISSING, f"{config.distribution} {config.release}")
        raise
    return result.stdout


async def install(context: Context, root: Path, packages: tuple[str, ...]) -> None:
    config = context.config
    archives = root / ARCHIVES
    command = apt_get(config.mirror_timeout)
    update, install = UPDATE.format(apt_get=command), INSTALL.format(apt_get=command)
    if config.cache_path is None:
        await once_more_if_damaged(context, lambda: _in_tree(context, root, f"{update} && {install}", packages))
    else:
        pool = package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        listing = await _in_tree(context, root, f"{update} && {LIST.format(apt_get=command)}", packages, capture=True)
        damaged = await link_in_verified(context, pool, archives, parse_print_uris(listing, archives)[1])
        await once_more_if_damaged(context, lambda: _in_tree(context, root, install, packages))
        package_cache.link_out(archives, pool, damaged)
    # The build image is thrown away, but its package lists and downloads are dead weight meanwhile.
    await run(["rm", "-rf", "--", root / "var/lib/apt/lists", *archives.glob("*.deb")], log=context.log)
