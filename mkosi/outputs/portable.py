"""`portable`: a portable service image (systemd's Portable Services): the whole tree, with its
os-release, as a read-only DDI (outputs/ddi.py).

portablectl attaches the unit files whose names start with the image's prefix: its file name
without suffixes, cut at the first "_" (foobar_1.2.raw: foobar), followed by ".", "-" or "@".
An image without one would attach nothing, so it is refused.
"""

from __future__ import annotations

from pathlib import Path

from mkosi import intree, naming
from mkosi.context import Context
from mkosi.distributions import parse_os_release
from mkosi.errors import MkosiError
from mkosi.outputs import ddi

UNIT_DIRECTORIES = ("etc/systemd/system", "usr/lib/systemd/system")
UNIT_TYPES = (".service", ".socket", ".target", ".timer", ".path")


def prefix(output: Path) -> str:
    return naming.image_stem(output).partition("_")[0]


def matching_units(root: Path, name_prefix: str) -> list[str]:
    found = []
    for directory in UNIT_DIRECTORIES:
        inside = intree.directory(root, directory)
        for unit in sorted(inside.iterdir()) if inside is not None else []:
            rest = unit.name.removeprefix(name_prefix)
            if rest != unit.name and rest[:1] in (".", "-", "@") and unit.name.endswith(UNIT_TYPES):
                found.append(f"/{directory}/{unit.name}")
    return found


def add_portable_prefixes(root: Path, name_prefix: str) -> None:
    """PORTABLE_PREFIXES= in the image's os-release (os-release(5)): what marks the image as a portable
    service (systemd-dissect says "portable service" only then) and names the prefixes of its units."""
    for path in ("etc/os-release", "usr/lib/os-release"):
        if intree.is_regular_file(root, path):
            target = intree.resolve(root, path)
            break
    else:
        raise MkosiError("a portable service image needs an os-release (/etc/os-release or /usr/lib/os-release)")
    text = target.read_text()
    if "PORTABLE_PREFIXES" not in parse_os_release(target):
        text = text + ("" if text.endswith("\n") or not text else "\n") + f"PORTABLE_PREFIXES={name_prefix}\n"
        intree.write_bytes(root, str(target.relative_to(root)), text.encode())


async def write(context: Context) -> None:
    config, root = context.config, context.root
    name_prefix = prefix(config.output)
    units = matching_units(root, name_prefix)
    if not units:
        raise MkosiError(
            f"no unit in /etc/systemd/system or /usr/lib/systemd/system is named {name_prefix}.service, "
            f"{name_prefix}-*.service or {name_prefix}@.service (or .socket, .target, .timer, .path): "
            f"portablectl would attach nothing from {config.output.name}"
        )
    add_portable_prefixes(root, name_prefix)
    context.log.info("portable service", units=units)
    # The read-only image needs the mount points portablectl's profiles bind the host's files onto.
    for path in ("etc/resolv.conf", "etc/machine-id"):
        if not intree.is_regular_file(root, path):
            intree.write_bytes(root, path, b"")
    await ddi.write(context, root)
