"""Debian binary packages: their control fields, and uncompressed copies of them for dpkg.

A .deb is an ar archive of `debian-binary`, `control.tar.*` and `data.tar.*`, the file system
content, compressed with xz (Debian) or zstd (Ubuntu). Decompressing it is most of the CPU time
dpkg spends on a package. A bootstrap needs the base system's files twice: once unpacked by hand
so that dpkg and the maintainer scripts can run in the tree at all, once more by dpkg. So each
package is decompressed once, on all cores side by side, into a copy of the package whose data
member is a plain `data.tar`, which dpkg accepts and unpacks without decompressing anything; for
the base system the same stream is unpacked into the tree on the way.
"""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
from collections.abc import Callable, Sequence
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
unset TAR_OPTIONS
package=$1 copy=$2 root=$3
shift 3
dpkg-deb --fsys-tarfile "$package" | tee -a "$copy" |
    tar --extract --numeric-owner --keep-directory-symlink --directory="$root" --file=- "$@"
"""
COPY_SCRIPT = 'dpkg-deb --fsys-tarfile "$1" >> "$2"'
# The control member's compressions Python reads by itself; others (zstd, Ubuntu's) go to dpkg-deb.
DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "control.tar.xz": lzma.decompress,
    "control.tar.gz": gzip.decompress,
    "control.tar": bytes,
}


class BrokenPackage(MkosiError):
    """A file that should be a Debian package is not one."""


def ar_header(name: str, size: int) -> bytes:
    fields = (name, "0", "0", "0", "100644", str(size))
    return b"".join(f.encode().ljust(width) for f, width in zip(fields, AR_FIELD_WIDTHS, strict=True)) + AR_HEADER_MAGIC


def _member_size(header: bytes) -> int:
    return int(header[48:58])


def _members_before_data(package: Path) -> list[tuple[bytes, bytes]]:
    """The package's ar members before its data member, as (header, padded body)."""
    with package.open("rb") as f:
        if f.read(len(AR_MAGIC)) != AR_MAGIC:
            raise BrokenPackage(f"{package} is not a Debian package (no ar archive)")
        members: list[tuple[bytes, bytes]] = []
        while len(header := f.read(AR_HEADER_SIZE)) == AR_HEADER_SIZE:
            if header.startswith(b"data.tar"):
                return members
            size = _member_size(header)
            members.append((header, f.read(size + size % 2)))  # members are padded to an even length
        raise BrokenPackage(f"{package} is not a Debian package (no data.tar member)")


def members_before_data(package: Path) -> bytes:
    """The package's bytes up to its data member: the ar magic, debian-binary and control.tar.*."""
    return AR_MAGIC + b"".join(header + body for header, body in _members_before_data(package))


def read_control_file(package: Path) -> str | None:
    """The package's control file, read in-process (a subprocess per package cost a bootstrap
    0.4 s); None where the control member's compression is one Python cannot read."""
    control_member = next((m for m in _members_before_data(package) if m[0].startswith(b"control.tar")), None)
    if control_member is None:
        raise BrokenPackage(f"{package} is not a Debian package (no control.tar member)")
    header, body = control_member
    name = header[:16].decode().strip().rstrip("/")
    decompress = DECOMPRESSORS.get(name)
    if decompress is None:
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(decompress(body[: _member_size(header)]))) as archive:
            member = next((m for m in archive.getmembers() if m.name in ("./control", "control")), None)
            control = archive.extractfile(member) if member is not None and member.isfile() else None
            if control is None:
                raise BrokenPackage(f"{package}: its control member {name} holds no control file")
            return control.read().decode()
    except (lzma.LZMAError, OSError, EOFError, tarfile.TarError, UnicodeDecodeError) as error:
        raise BrokenPackage(f"{package}: unreadable control member {name} ({error})") from error


def parse_fields(stanza: str) -> dict[str, str]:
    """The fields of one control stanza (a package's control file, an entry of dpkg's status);
    continuation lines are joined to their field."""
    fields: dict[str, str] = {}
    name = None
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and name is not None:
            fields[name] += "\n" + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            fields[name] = value.strip()
    return fields


async def control_fields(package: Path, log: Any = None) -> dict[str, str]:
    control = read_control_file(package)
    if control is None:
        control = (await run(["dpkg-deb", "--field", package], capture_stdout=True, log=log)).stdout
    return parse_fields(control)


async def uncompressed_copy(
    package: Path, copy: Path, root: Path | None = None, excludes: Sequence[str] = (), log: Any = None
) -> None:
    """Write `copy`, the same package with an uncompressed data member, and with a `root`, unpack
    the package's files into it too. `excludes` are tar patterns (./usr/share/doc/*) of members
    left out of the tree."""
    prefix = members_before_data(package)
    # The data member's size is known only once decompressed: a placeholder, corrected below.
    copy.write_bytes(prefix + ar_header("data.tar", 0))
    if root is None:
        await run(["bash", "-c", COPY_SCRIPT, "copy", package, copy], log=log)
    else:
        excluded = (f"--exclude={e}" for e in excludes)
        await run(["bash", "-c", UNPACK_SCRIPT, "unpack", package, copy, root, *excluded], log=log)
    data_size = copy.stat().st_size - len(prefix) - AR_HEADER_SIZE
    with copy.open("r+b") as f:
        f.seek(len(prefix))
        f.write(ar_header("data.tar", data_size))
        if data_size % 2:  # ar pads every member to an even length
            f.seek(0, 2)
            f.write(b"\n")
