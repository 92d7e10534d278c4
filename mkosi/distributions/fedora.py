"""Fedora: installed with dnf from Fedora's mirrors (found through its metalink) or `--mirror`."""

from __future__ import annotations

from pathlib import Path

from mkosi.config import Config
from mkosi.context import Context
from mkosi.distributions import Distribution
from mkosi.distributions.installer import InitrdByMkosi, PackageNames
from mkosi.errors import MkosiError
from mkosi.package_managers import dnf
from mkosi.package_managers.rpm import Repository

METALINK = "https://mirrors.fedoraproject.org/metalink"
# Each release's signing key as the fedora-repos package ships it (/etc/pki/rpm-gpg in Fedora),
# from the package's sources over HTTPS; the host's distribution-gpg-keys package, where it has one,
# has the same files locally.
FEDORA_REPOS_KEYS = "https://src.fedoraproject.org/rpms/fedora-repos/raw/rawhide/f"
LOCAL_KEYS = Path("/usr/share/distribution-gpg-keys/fedora")
# Fedora 45 came out in the autumn of 2026 (a release every six months, 44 in the spring).
DEFAULT_RELEASE = "45"
DEFAULT_REPOSITORIES = ("fedora", "updates")
PACKAGES = PackageNames(
    base=("fedora-release", "systemd", "util-linux"),
    kernel=("kernel-core", "dracut"),
    boot=("systemd-boot-unsigned",),
    filesystems={"ext4": "e2fsprogs", "btrfs": "btrfs-progs", "xfs": "xfsprogs", "erofs": "erofs-utils"},
)


def _paths(release: str, arch: str) -> dict[str, tuple[str, str]]:
    """Each repository's path below a mirror and its metalink name."""
    if release == "rawhide":
        return {"fedora": (f"development/rawhide/Everything/{arch}/os/", "rawhide")}
    return {
        "fedora": (f"releases/{release}/Everything/{arch}/os/", f"fedora-{release}"),
        "updates": (f"updates/{release}/Everything/{arch}/", f"updates-released-f{release}"),
        "updates-testing": (f"updates/testing/{release}/Everything/{arch}/", f"updates-testing-f{release}"),
    }


def gpg_keys(release: str, local_keys: Path = LOCAL_KEYS) -> tuple[str, ...]:
    number = release
    if release == "rawhide":
        # Rawhide is signed with the key of the release it will become.
        number = str(int(DEFAULT_RELEASE) + 1)
    name = f"RPM-GPG-KEY-fedora-{number}-primary"
    local = local_keys / name
    return (local.as_uri(),) if local.exists() else (f"{FEDORA_REPOS_KEYS}/{name}",)


def repositories(config: Config) -> list[Repository]:
    arch = config.architecture.rpm
    paths = _paths(config.release, arch)
    wanted = config.repositories or tuple(r for r in DEFAULT_REPOSITORIES if r in paths)
    unknown = [r for r in wanted if r not in paths]
    if unknown:
        raise MkosiError(f"fedora {config.release} has no repository {', '.join(unknown)} (known: {', '.join(paths)})")
    keys = tuple(k.absolute().as_uri() for k in config.repository_keys) or gpg_keys(config.release)
    result = []
    for name in wanted:
        path, metalink = paths[name]
        if config.mirror:
            url = f"{config.mirror.rstrip('/')}/{path}"
            result.append(Repository(name, f"Fedora {config.release} {name}", baseurl=url, gpgkeys=keys))
        else:
            link = f"{METALINK}?repo={metalink}&arch={arch}"
            result.append(Repository(name, f"Fedora {config.release} {name}", metalink=link, gpgkeys=keys))
    return result


class Installer(InitrdByMkosi, distribution=Distribution.fedora):
    default_release = DEFAULT_RELEASE
    releases = None
    package_manager_tools = ("dnf", "rpm")
    initrd_paths = ("boot/initramfs-{version}.img",)
    packages = PACKAGES

    def check_release(self, release: str) -> None:
        if release != "rawhide" and not (release.isascii() and release.isdigit()):
            raise ValueError(f"fedora has no release {release!r} (use a release number or rawhide)")

    async def install_packages(self, context: Context, root: Path, packages: tuple[str, ...]) -> None:
        await dnf.install(context, root, repositories(context.config), packages)
