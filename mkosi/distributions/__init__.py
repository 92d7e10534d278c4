"""The distributions mkosi builds, and which one the host runs.

Everything else about a distribution (releases, repositories, package names, how it is installed)
is its installer's, in a module of its own next to this one: `Distribution.installer()`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkosi.distributions.installer import DistributionInstaller


class Distribution(enum.StrEnum):
    debian = "debian"
    ubuntu = "ubuntu"
    fedora = "fedora"
    arch = "arch"
    opensuse = "opensuse"

    def installer(self) -> DistributionInstaller:
        """Everything mkosi knows about this distribution and how to install it."""
        # Imported here: the installers import the pipeline's modules, which import this one.
        from mkosi.distributions.installer import DistributionInstaller

        return DistributionInstaller.of(self)


def parse_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return os_release_fields(text)


def os_release_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
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
