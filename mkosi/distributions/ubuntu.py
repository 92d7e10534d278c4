"""Ubuntu: bootstrapped with apt and dpkg, like Debian, from Ubuntu's archive."""

from __future__ import annotations

from pathlib import Path

from mkosi.config import Architecture, Config
from mkosi.distributions import Distribution, debian
from mkosi.distributions.debian import packages, tree_files, unpack_excludes
from mkosi.distributions.installer import PackageNames
from mkosi.errors import MkosiError
from mkosi.package_managers import apt_bootstrap
from mkosi.package_managers.apt_bootstrap import Source

# Ubuntu publishes amd64 on its main archive and every other architecture on the ports archive.
PORTS = "http://ports.ubuntu.com/ubuntu-ports"
DEFAULT_MIRRORS = {Architecture.x86_64: "http://archive.ubuntu.com/ubuntu", Architecture.arm64: PORTS}
SECURITY_MIRRORS = {Architecture.x86_64: "http://security.ubuntu.com/ubuntu", Architecture.arm64: PORTS}
# systemd-boot and dracut live in universe.
DEFAULT_COMPONENTS = ("main", "universe")
# Debian ships no Ubuntu keys; Ubuntu's ubuntu-keyring package installs them here.
KEYRING = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")
PACKAGES = PackageNames(
    # apt named explicitly: apt in the image is what installs BuildPackages= into the build image.
    base=("systemd", "systemd-sysv", "dbus", "libpam-systemd", "apt"),
    kernel=("linux-image-generic",),
    # As Debian's: Ubuntu's kernel packages also install to /boot/vmlinuz-* and run dracut's hook.
    boot=("dracut", "zstd", "udev", "systemd-boot-efi"),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfs-progs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)


def sources(config: Config) -> list[Source]:
    components = config.repositories or DEFAULT_COMPONENTS
    release = config.release
    if config.mirror:
        return [Source(config.mirror, release, components)]
    main, security = DEFAULT_MIRRORS[config.architecture], SECURITY_MIRRORS[config.architecture]
    return [
        Source(main, release, components),
        Source(main, f"{release}-updates", components),
        Source(security, f"{release}-security", components),
    ]


def keyrings(config: Config, path: Path = KEYRING) -> tuple[Path, ...]:
    """The keys Ubuntu's archive is checked against: RepositoryKey= if given, else Ubuntu's keyring
    from the host, which Debian 12 does not package."""
    if not config.repository_key_check:
        return ()
    if config.repository_keys:
        return config.repository_keys
    if not path.exists():
        raise MkosiError(
            f"checking Ubuntu's signatures needs its archive keyring at {path} (from Ubuntu's "
            "ubuntu-keyring package) or given as RepositoryKey=; RepositoryKeyCheck=no builds without checking"
        )
    return (path,)


def bootstrap(config: Config) -> apt_bootstrap.Bootstrap:
    return apt_bootstrap.Bootstrap(
        sources=tuple(sources(config)),
        packages=packages(config, PACKAGES, PACKAGES.kernel[0]),
        keyrings=keyrings(config),
        image_keys=config.repository_keys if config.repository_key_check else (),
        files=tree_files(config),
        excludes=unpack_excludes(config),
        installed_last=PACKAGES.kernel if config.bootable else (),
    )


class Installer(debian.Installer, distribution=Distribution.ubuntu):
    """Installed like Debian (apt and dpkg), from Ubuntu's archive with Ubuntu's names."""

    # 26.04 "resolute" is the LTS of April 2026; 25.10 "questing" is the interim release still supported.
    default_release = "resolute"
    releases = frozenset({"jammy", "noble", "questing", "resolute"})
    # Past their standard support, moved off the main archive.
    archived_releases = frozenset({"trusty", "xenial", "bionic", "focal", "utopic", "vivid", "wily", "yakkety",
                                   "zesty", "artful", "cosmic", "disco", "eoan", "groovy", "hirsute", "impish",
                                   "kinetic", "lunar", "mantic", "oracular", "plucky"})  # fmt: skip
    archive = "http://old-releases.ubuntu.com/ubuntu"

    def bootstrap(self, config: Config) -> apt_bootstrap.Bootstrap:
        return bootstrap(config)
