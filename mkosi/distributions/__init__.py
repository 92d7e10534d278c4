"""What mkosi knows about each distribution before building: names, releases, defaults.

The code that installs a distribution lives in a module of its own next to this one; this module
only holds the facts that configuration parsing and validation need.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Distribution(enum.StrEnum):
    debian = "debian"
    ubuntu = "ubuntu"
    fedora = "fedora"
    arch = "arch"
    opensuse = "opensuse"


@dataclass(frozen=True)
class DistributionInfo:
    default_release: str
    # None means any release name is accepted (rolling distributions, numbered releases).
    releases: frozenset[str] | None
    # Whether images of this distribution can be built yet.
    implemented: bool
    # Whether bootable images can be built yet.
    bootable: bool = False


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


DISTRIBUTIONS: dict[Distribution, DistributionInfo] = {
    Distribution.debian: DistributionInfo(
        default_release="bookworm",
        releases=frozenset({"bookworm", "trixie", "forky", "testing", "sid", "unstable"}),
        implemented=True,
        bootable=True,
    ),
    # 26.04 "resolute" is the LTS of April 2026; 25.10 "questing" is the interim release still supported.
    Distribution.ubuntu: DistributionInfo(
        default_release="resolute",
        releases=frozenset({"jammy", "noble", "questing", "resolute"}),
        implemented=True,
        bootable=True,
    ),
    # Fedora 45 came out in the autumn of 2026 (a release every six months, 44 in the spring).
    Distribution.fedora: DistributionInfo(default_release="45", releases=None, implemented=True, bootable=True),
    Distribution.arch: DistributionInfo(
        default_release="rolling", releases=frozenset({"rolling"}), implemented=True, bootable=True
    ),
    Distribution.opensuse: DistributionInfo(
        default_release="tumbleweed", releases=frozenset({"tumbleweed"}), implemented=True, bootable=True
    ),
}


def check_release(distribution: Distribution, release: str) -> None:
    """Raise ValueError with a readable message if the distribution has no such release."""
    if distribution is Distribution.fedora:
        if release != "rawhide" and not (release.isascii() and release.isdigit()):
            raise ValueError(f"fedora has no release {release!r} (use a release number or rawhide)")
        return
    releases = DISTRIBUTIONS[distribution].releases
    if releases is not None and release not in releases:
        raise ValueError(f"{distribution} has no release {release!r} (known: {', '.join(sorted(releases))})")


def parse_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def detect_host(os_release: Path = Path("/etc/os-release")) -> tuple[Distribution, str | None]:
    """The host's distribution and release, falling back to Debian's default release."""
    fields = parse_os_release(os_release)
    ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
    for ident in ids:
        name = "opensuse" if ident.startswith("opensuse") else ident
        if name in Distribution.__members__:
            distribution = Distribution(name)
            # A derivative (found through ID_LIKE) has release names of its own.
            release = fields.get("VERSION_CODENAME") or fields.get("VERSION_ID") if ident == ids[0] else None
            if distribution is Distribution.arch:
                release = "rolling"
            elif distribution is Distribution.opensuse:
                release = "tumbleweed"
            return distribution, release or None
    return Distribution.debian, None
