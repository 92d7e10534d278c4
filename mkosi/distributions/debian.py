"""Debian: bootstrapped with apt and dpkg (package_managers/apt_bootstrap.py) from the configured mirror."""

from __future__ import annotations

import re
from pathlib import Path

from mkosi import boot
from mkosi.config import Config
from mkosi.context import Context
from mkosi.disk.layout import checked_filesystems
from mkosi.distributions import Distribution
from mkosi.distributions.installer import DistributionInstaller, PackageNames
from mkosi.package_lock import load_lock
from mkosi.package_managers import apt, apt_bootstrap
from mkosi.package_managers.apt_bootstrap import Source
from mkosi.tree import DOCUMENTATION

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Only Debian's own keys: the host's apt keyrings may trust any third-party archive.
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
REMOVED_KEYRING = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")
PACKAGES = PackageNames(
    base=("systemd", "systemd-sysv", "dbus", "libpam-systemd"),
    kernel=(),  # kernel_package() names each architecture's flavour
    # dracut for a systemd-based initrd (zstd to compress it quickly), udev, and systemd-boot's EFI
    # binaries for the ESP and the unified kernel image.
    boot=("dracut", "zstd", "udev", "systemd-boot-efi"),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfs-progs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)
# Stable releases get their point-release updates and security fixes when the default mirror is used.
SUPPORTED_STABLE = {"bookworm", "trixie"}
# systemd-cryptsetup and systemd-veritysetup, with which the initrd opens LUKS and verity roots, are
# part of the systemd package up to bookworm and a package of their own since.
CRYPTSETUP_IN_SYSTEMD = {"bookworm"}


def host_mirrors(apt_dir: Path = Path("/etc/apt")) -> tuple[str | None, str | None]:
    """The Debian mirror and security mirror the host's apt uses, if it uses any."""
    uris: list[tuple[str, str]] = []  # (uri, suite)
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (m.group(1).lower(), m.group(2).strip())
                for m in re.finditer(r"^([A-Za-z-]+):(.*)$", stanza, re.MULTILINE)
            )
            if "deb" in fields.get("types", "").split():
                uris += [(u, s) for u in fields.get("uris", "").split() for s in fields.get("suites", "").split()]
    legacy = apt_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                uris.append((m.group(1), m.group(2)))
    mirror = next((u for u, s in uris if "debian" in u and not s.endswith("-security")), None)
    security = next((u for u, s in uris if "debian" in u and s.endswith("-security")), None)
    return mirror, security


def sources(mirror: str | None, release: str, components: tuple[str, ...]) -> list[Source]:
    """The apt sources of the image, first the main archive."""
    if mirror:
        return [Source(mirror, release, components)]
    host_mirror, host_security = host_mirrors()
    main = host_mirror or DEFAULT_MIRROR
    result = [Source(main, release, components)]
    if release in SUPPORTED_STABLE:
        security = host_security or main.removesuffix("/debian") + "/debian-security"
        result += [
            Source(main, f"{release}-updates", components),
            Source(security, f"{release}-security", components),
        ]
    return result


def kernel_package(config: Config) -> str:
    """Debian's kernel flavours are named after dpkg's architectures (linux-image-amd64, -arm64)."""
    return f"linux-image-{config.architecture.debian}"


def packages(config: Config, names: PackageNames = PACKAGES, kernel: str | None = None) -> tuple[str, ...]:
    """Everything the bootstrap installs: the base system, what booting needs, the user's packages."""
    kernel = kernel or kernel_package(config)
    tools = names.filesystem_tools(checked_filesystems(config))
    boot_packages = (kernel, *names.boot, *tools) if config.bootable else ()
    return (*names.base, *boot_packages, *config.packages)


def cryptsetup_packages(config: Config) -> tuple[str, ...]:
    if config.bootable and boot.opens_protected_root(config) and config.release not in CRYPTSETUP_IN_SYSTEMD:
        return ("systemd-cryptsetup",)
    return ()


# dpkg's configuration, in the image, for leaving documentation out of every package installed.
DPKG_NO_DOCUMENTATION = "etc/dpkg/dpkg.cfg.d/mkosi-nodoc"


def tree_files(config: Config) -> dict[str, str]:
    """Files of mkosi's that go into the tree before dpkg installs the first package:
    - without --with-docs, dpkg's path excludes for documentation, so that dpkg never writes the
      thousands of files (systemd's manual pages, ...) that the clean stage would remove;
    - for a bootable image, the dracut configuration, so that the kernel's initrd hook builds the
      initrd we want, once.
    """
    files = {}
    if not config.with_docs:
        files[DPKG_NO_DOCUMENTATION] = "".join(f"path-exclude={pattern}\n" for pattern in DOCUMENTATION)
    if config.bootable:
        files[boot.DRACUT_CONFIG_PATH] = boot.dracut_config(config)
    return files


def unpack_excludes(config: Config) -> tuple[str, ...]:
    """The same documentation as tar patterns, for the packages the bootstrap unpacks by hand."""
    return () if config.with_docs else tuple(f".{pattern}" for pattern in DOCUMENTATION)


def keyrings(release: str) -> tuple[Path, ...]:
    """Debian's keys; for an archived release also those Debian retired, which signed it."""
    return (KEYRING, REMOVED_KEYRING) if release in Installer.archived_releases else (KEYRING,)


def bootstrap(config: Config) -> apt_bootstrap.Bootstrap:
    return apt_bootstrap.Bootstrap(
        sources=tuple(sources(config.mirror, config.release, config.repositories or ("main",))),
        packages=(*packages(config), *cryptsetup_packages(config)),
        keyrings=(config.repository_keys or keyrings(config.release)) if config.repository_key_check else (),
        image_keys=config.repository_keys if config.repository_key_check else (),
        files=tree_files(config),
        excludes=unpack_excludes(config),
        installed_last=(kernel_package(config),) if config.bootable else (),
        lock=load_lock(config.package_lock) if config.package_lock is not None else (),
        lock_path=config.package_lock,
    )


class Installer(DistributionInstaller, distribution=Distribution.debian):
    default_release = "bookworm"
    releases = frozenset({"bookworm", "trixie", "forky", "testing", "sid", "unstable"})
    package_manager_tools = ("apt", "dpkg")
    initrd_paths = ("boot/initrd.img-{version}",)
    locks_packages = True
    archived_releases = frozenset({"buzz", "rex", "bo", "hamm", "slink", "potato", "woody", "sarge", "etch", "lenny",
                                   "squeeze", "wheezy", "jessie", "stretch", "buster", "bullseye"})  # fmt: skip
    archive = "http://archive.debian.org/debian"
    sysupdate_releases = "trixie and later, in systemd-container"

    def sysupdate_package(self, release: str) -> str | None:
        # Debian builds systemd-sysupdate from trixie (systemd 257) on, into systemd-container;
        # bookworm's systemd 252 is built without it.
        return None if release == "bookworm" or release in self.archived_releases else "systemd-container"

    def bootstrap(self, config: Config) -> apt_bootstrap.Bootstrap:
        """What the apt and dpkg bootstrap installs, from where, trusting which keys."""
        return bootstrap(config)

    async def install(self, context: Context) -> None:
        await apt_bootstrap.install(context, self.bootstrap(context.config))

    async def install_packages(self, context: Context, root: Path, packages: tuple[str, ...]) -> None:
        await apt.install(context, root, packages)
