"""One module per package manager, each driving its tool the way it is meant to be used for an
install root: configuration, caches, keyrings and logs live in the build's workspace or in the image,
never on the build host.

A distribution module picks one of these and hands it its mirror, repositories, release and package
names. What the modules share lives here: reporting a package that does not exist by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mkosi.errors import MkosiError
from mkosi.run import CommandError


class NoSuchPackage(MkosiError):
    """The repositories have no package of this name."""


def missing_packages(error: CommandError, patterns: Iterable[str]) -> list[str]:
    """The package names a failed command complained about, using each tool's own wording."""
    names: list[str] = []
    for line in error.tail:
        for pattern in patterns:
            if (match := re.search(pattern, line)) and match.group(1) not in names:
                names.append(match.group(1))
    return names


def raise_missing(error: CommandError, patterns: Iterable[str], where: str) -> None:
    """Turn a package manager's failure to find packages into an error that names them."""
    if names := missing_packages(error, patterns):
        plural = "s" if len(names) > 1 else ""
        raise NoSuchPackage(f"no package{plural} {', '.join(names)} in {where}") from error
