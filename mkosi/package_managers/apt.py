"""apt inside an existing Debian or Ubuntu tree: installing packages after the bootstrap.

apt runs in the tree itself (systemd-nspawn), with the sources and keys the bootstrap configured
there, so nothing of the host's apt is used. The package pool is linked in and out around it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mkosi import package_cache
from mkosi.context import Context
from mkosi.nspawn import NSPAWN_BUILD, NSPAWN_ENV
from mkosi.package_managers import raise_missing
from mkosi.package_managers.apt_bootstrap import MISSING, mirror_options, raise_download_failure
from mkosi.run import CommandError, run

APT_OPTIONS = ["-o", "APT::Keep-Downloaded-Packages=true", "-o", "Dpkg::Use-Pty=false", "-q"]


def script(timeout: int) -> str:
    """What runs in the tree: apt fetches the package lists, then installs the packages ("$@"),
    with the same limits for a failing mirror as the bootstrap's apt."""
    acquire = [word for name, value in mirror_options(timeout).items() for word in ("-o", f"{name}={value}")]
    options = shlex.join([*APT_OPTIONS, *acquire])
    return (
        f"apt-get {options} update && "
        f'DEBIAN_FRONTEND=noninteractive apt-get {options} install -y --no-install-recommends -- "$@"'
    )


async def install(context: Context, root: Path, packages: tuple[str, ...]) -> None:
    config = context.config
    archives = root / "var/cache/apt/archives"
    pool = (
        package_cache.pool_for(config.cache_path, config.distribution, config.release, config.architecture)
        if config.cache_path is not None
        else None
    )
    if pool is not None:
        package_cache.link_in(pool, archives)
    command = [*NSPAWN_BUILD, f"--directory={root}", "/bin/sh", "-c", script(config.mirror_timeout), "sh", *packages]
    try:
        await run(command, env=NSPAWN_ENV, log=context.log)
    except CommandError as error:
        raise_download_failure(error, config.mirror_timeout)
        raise_missing(error, MISSING, f"{config.distribution} {config.release}")
        raise
    if pool is not None:
        package_cache.link_out(archives, pool)
    # The build image is thrown away, but its package lists and downloads are dead weight meanwhile.
    await run(["rm", "-rf", "--", root / "var/lib/apt/lists", *archives.glob("*.deb")], log=context.log)
