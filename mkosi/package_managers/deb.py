"""Debian binary packages: unpacking one into a tree while keeping an uncompressed copy for dpkg.

A .deb is an ar archive of `debian-binary`, `control.tar.*` and `data.tar.*`, the file system
content, compressed with xz (Debian) or zstd (Ubuntu). Decompressing it is most of the CPU time
dpkg spends on a package. A bootstrap needs each essential package's files twice: once unpacked
by hand so that dpkg and the maintainer scripts can run in the tree at all, once more by dpkg. So
each package is decompressed once, on all cores side by side, and the same stream goes both into
the tree and into a copy of the package whose data member is a plain `data.tar`, which dpkg
accepts and unpacks without decompressing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mkosi.errors import MkosiError
from mkosi.run import run

AR_MAGIC = b"!<arch>\n"
AR_HEADER_SIZE = 60
# name, mtime, uid, gid, mode, size, then the header's own magic
AR_FIELD_WIDTHS = (16, 12, 6, 6, 8, 10)
AR_HEADER_MAGIC = b"`\n"

# Decompress the package, append the stream to the copy, unpack it into the tree. Numeric owners:
# the names in the archive are the image's, which the build host may map to other ids. Directory
# symlinks stay: /bin and friends point into /usr before any package is unpacked.
UNPACK_SCRIPT = """set -o pipefail
package=$1 copy=$2 root=$3
shift 3
dpkg-deb --fsys-tarfile "$package" | tee -a "$copy" |
    tar --extract --numeric-owner --keep-directory-symlink --directory="$root" --file=- "$@"
"""


class BrokenPackage(MkosiError):
    """A file that should be a Debian package is not one."""


def ar_header(name: str, size: int) -> bytes:
    fields = (name, "0", "0", "0", "100644", str(size))
    return b"".join(f.encode().ljust(width) for f, width in zip(fields, AR_FIELD_WIDTHS, strict=True)) + AR_HEADER_MAGIC


def members_before_data(package: Path) -> bytes:
    """The package's bytes up to its data member: the ar magic, debian-binary and control.tar.*."""
    with package.open("rb") as f:
        if f.read(len(AR_MAGIC)) != AR_MAGIC:
            raise BrokenPackage(f"{package} is not a Debian package (no ar archive)")
        kept = bytearray(AR_MAGIC)
        while len(header := f.read(AR_HEADER_SIZE)) == AR_HEADER_SIZE:
            if header.startswith(b"data.tar"):
                return bytes(kept)
            size = int(header[48:58])
            body = f.read(size + size % 2)  # members are padded to an even length
            kept += header + body
        raise BrokenPackage(f"{package} is not a Debian package (no data.tar member)")


async def unpack(package: Path, root: Path, copy: Path, excludes: Sequence[str] = (), log: Any = None) -> None:
    """Unpack `package`'s files into `root` and write `copy`, the same package with an uncompressed
    data member. `excludes` are tar patterns (./usr/share/doc/*) of members left out of the tree."""
    prefix = members_before_data(package)
    # The data member's size is known only once decompressed: a placeholder, corrected below.
    copy.write_bytes(prefix + ar_header("data.tar", 0))
    await run(
        ["bash", "-c", UNPACK_SCRIPT, "unpack", package, copy, root, *(f"--exclude={e}" for e in excludes)],
        log=log,
    )
    data_size = copy.stat().st_size - len(prefix) - AR_HEADER_SIZE
    # tar streams come in 512-byte blocks, so no padding byte is needed after the member.
    with copy.open("r+b") as f:
        f.seek(len(prefix))
        f.write(ar_header("data.tar", data_size))
