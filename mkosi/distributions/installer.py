"""One installer per distribution, registered by the distribution it installs.

The pipeline asks `config.distribution.installer()` for everything distribution-specific (its
releases, how to install an image, how to add packages to a tree) and names no distribution itself.
Each distribution's module defines one subclass with `distribution=`; importing it registers it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mkosi import boot
from mkosi.context import Context
from mkosi.disk.layout import checked_filesystems
from mkosi.distributions import Distribution
from mkosi.errors import MkosiError
from mkosi.nspawn import NSPAWN_BUILD, NSPAWN_ENV
from mkosi.run import run


@dataclass(frozen=True)
class PackageNames:
    """What a distribution calls the packages an image is made of."""

    # Installed into every image: enough to boot as a container with systemd as PID 1.
    base: tuple[str, ...]
    # What a bootable image adds: a kernel, an initrd generator and the boot loader.
    kernel: tuple[str, ...]
    boot: tuple[str, ...]
    # The tools that create and check each root file system type inside a bootable image.
    filesystems: dict[str, str]

    def image(self, *, bootable: bool, extra: tuple[str, ...], filesystems: tuple[str, ...] = ()) -> tuple[str, ...]:
        """What an image installs: the base system, what booting needs (with the tools of the
        `filesystems` the booted system checks), then the user's `extra`."""
        boot = (*self.kernel, *self.boot, *self.filesystem_tools(filesystems)) if bootable else ()
        return (*self.base, *boot, *extra)

    def filesystem_tools(self, filesystems: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.filesystems[f] for f in filesystems if f in self.filesystems))


class DistributionInstaller:
    """What mkosi knows about one distribution and how it installs it."""

    distribution: ClassVar[Distribution]
    default_release: ClassVar[str]
    # None means any release name is accepted (rolling distributions, numbered releases).
    releases: ClassVar[frozenset[str] | None]
    # The host tools that decide what its package manager installs: recorded in release manifests.
    package_manager_tools: ClassVar[tuple[str, ...]]
    # Whether its install records every package it installs and honours PackageLock=.
    locks_packages: ClassVar[bool] = False
    # Releases that left the distribution's main mirrors, and where they live now: built only from a
    # Mirror= given (that archive or a copy of it), never from the default one, which lacks them.
    archived_releases: ClassVar[frozenset[str]] = frozenset()
    archive: ClassVar[str | None] = None
    # Which of its releases ship systemd-sysupdate, for the error that refuses the others.
    sysupdate_releases: ClassVar[str] = "none that mkosi knows of"
    # Where its kernel packages' hooks leave a kernel's initrd ({version} is the kernel's).
    initrd_paths: ClassVar[tuple[str, ...]] = ()

    _registry: ClassVar[dict[Distribution, DistributionInstaller]] = {}

    def __init_subclass__(cls, distribution: Distribution | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if distribution is not None:
            cls.distribution = distribution
            DistributionInstaller._registry[distribution] = cls()

    @classmethod
    def of(cls, distribution: Distribution) -> DistributionInstaller:
        # Each distribution's module imports the pipeline's modules, which import the configuration,
        # which names the distributions: so they are imported when first asked for, not before.
        importlib.import_module(f"mkosi.distributions.{distribution.value}")
        return cls._registry[distribution]

    def check_release(self, release: str) -> None:
        """Raise ValueError with a readable message if the distribution has no such release."""
        if self.releases is not None and release not in self.releases | self.archived_releases:
            known = ", ".join(sorted(self.releases))
            raise ValueError(f"{self.distribution} has no release {release!r} (known: {known})")

    def archived_problem(self, release: str, mirror: str | None) -> str | None:
        """Why `release` cannot be built from the default mirror, or None."""
        if release in self.archived_releases and not mirror:
            return (
                f"{self.distribution} {release} is no longer on {self.distribution}'s main mirrors: it lives at "
                f"{self.archive}; build it with Mirror={self.archive} (or a mirror of that archive)"
            )
        return None

    def sysupdate_package(self, release: str) -> str | None:
        """The package that ships systemd-sysupdate in `release`, or None if the release has none."""
        return None

    def sysupdate_problem(self, release: str) -> str | None:
        """Why an image of `release` cannot update itself with systemd-sysupdate, or None."""
        if self.sysupdate_package(release) is not None:
            return None
        return f"{self.distribution} {release} ships no systemd-sysupdate (releases that do: {self.sysupdate_releases})"

    async def install(self, context: Context) -> None:
        """Install the image's tree: the base system, what booting needs and the user's packages."""
        raise NotImplementedError

    async def install_packages(self, context: Context, root: Path, packages: tuple[str, ...]) -> None:
        """Add packages to an installed tree (the build image's BuildPackages=), from the image's
        own repositories."""
        raise NotImplementedError


class InitrdByMkosi(DistributionInstaller):
    """A distribution whose package manager leaves the initrd to mkosi (Fedora, openSUSE, Arch):
    mkosi's dracut configuration goes in first, then the packages with what booting needs, then
    mkosi builds the initrd if no kernel hook made one."""

    packages: ClassVar[PackageNames]

    async def install(self, context: Context) -> None:
        config = context.config
        boot.write_dracut_config(context.root, config)
        names = self.packages.image(
            bootable=config.bootable, extra=config.packages, filesystems=checked_filesystems(config)
        )
        await self.install_packages(context, context.root, names)
        if config.bootable:
            await ensure_initrd(context)


async def ensure_initrd(context: Context) -> None:
    """Build the newest kernel's initrd with the image's dracut unless a kernel hook already did.

    Debian's and Ubuntu's kernel packages run dracut's hook when they are installed. Elsewhere what
    happens differs: Fedora's kernel-install may or may not run in an install root, Arch has no
    dracut hook at all. So, rather than reproduce each distribution's hooks, mkosi runs dracut
    itself, inside the image (its dracut, its modules, mkosi's configuration from
    /etc/dracut.conf.d), once, for exactly the kernel it will boot.
    """
    root = context.root
    version, _ = boot.newest_kernel(root)
    hooks = context.config.distribution.installer().initrd_paths
    if any(p.is_file() for p in boot.initrd_candidates(root, version, hooks)):
        return
    if not any((root / directory / "dracut").exists() for directory in ("usr/bin", "usr/sbin")):
        raise MkosiError(f"Bootable=yes: kernel {version} has no initrd and the image has no dracut to build one")
    output = "/" + boot.MKOSI_INITRD.format(version=version)
    command = [*NSPAWN_BUILD, f"--directory={root}", "dracut", "--force", "--kver", version, output]
    await run(command, env=NSPAWN_ENV, log=context.log)
