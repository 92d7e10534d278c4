"""`sysext` and `confext`: what the build added to its base (BaseImage=), as a DDI (outputs/ddi.py).

The tree started as the base's (mkosi.base_image); the image keeps only the entries under /usr and
/opt (sysext) or /etc (confext) that the build added or changed, with the directories leading to
them, and `extension-release.NAME`, which systemd compares with the os-release of the system it
extends. NAME is the image's file name without its suffixes: systemd insists that they match.
"""

from __future__ import annotations

import os
from pathlib import Path

from mkosi import base_image, intree, naming
from mkosi.config import Config, OutputFormat
from mkosi.context import Context
from mkosi.distributions import parse_os_release
from mkosi.errors import MkosiError
from mkosi.outputs import ddi

TREE = "extension"
RELEASE_DIRECTORIES = {
    OutputFormat.sysext: "usr/lib/extension-release.d",
    OutputFormat.confext: "etc/extension-release.d",
}
# What a system may require beyond ID= instead of VERSION_ID= (os-release(5)).
LEVELS = {OutputFormat.sysext: "SYSEXT_LEVEL", OutputFormat.confext: "CONFEXT_LEVEL"}


def name(config: Config) -> str:
    return naming.image_stem(config.output)


def base_os_release(root: Path) -> dict[str, str]:
    for path in ("etc/os-release", "usr/lib/os-release"):
        if intree.is_regular_file(root, path):
            return parse_os_release(intree.resolve(root, path))
    raise MkosiError("BaseImage= has no os-release (/etc/os-release or /usr/lib/os-release): systemd needs its ID=")


def extension_release(config: Config, os_release: dict[str, str]) -> str:
    """ID= and VERSION_ID= (or the level, when the base has one) of the base, and the architecture."""
    if not os_release.get("ID"):
        raise MkosiError("the os-release of BaseImage= has no ID=: systemd matches extensions by it")
    level = LEVELS[config.format]
    if os_release.get(level):
        version = f"{level}={os_release[level]}"
    elif os_release.get("VERSION_ID"):
        version = f"VERSION_ID={os_release['VERSION_ID']}"
    else:
        raise MkosiError(
            f"the os-release of BaseImage= has neither {level}= nor VERSION_ID= (a testing or unstable release?): "
            "systemd accepts no extension for it"
        )
    return f"ID={os_release['ID']}\n{version}\nARCHITECTURE={config.architecture}\n"


def _copy_metadata(source: Path, target: Path) -> None:
    st = source.lstat()
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, st.st_mode & 0o7777)
    for attribute in os.listxattr(source):
        os.setxattr(target, attribute, os.getxattr(source, attribute))


def _make_directory(root: Path, tree: Path, path: str, made: list[str]) -> None:
    if (tree / path).exists():
        return
    parent = os.path.dirname(path)
    if parent:
        _make_directory(root, tree, parent, made)
    (tree / path).mkdir()
    _copy_metadata(root / path, tree / path)
    made.append(path)


def copy_changes(root: Path, tree: Path, paths: list[str]) -> None:
    """The changed entries into `tree`: files, links and nodes as hard links (their inodes, with
    every attribute), directories anew with the tree's metadata; directory times last."""
    tree.mkdir()
    made: list[str] = []
    for path in paths:
        if (root / path).is_dir() and not (root / path).is_symlink():
            _make_directory(root, tree, path, made)
            continue
        if parent := os.path.dirname(path):
            _make_directory(root, tree, parent, made)
        os.link(root / path, tree / path, follow_symlinks=False)
    for path in reversed(made):
        st = (root / path).lstat()
        os.utime(tree / path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def write(context: Context) -> None:
    config, root = context.config, context.root
    paths = base_image.changed(context, base_image.SCOPES[config.format])
    context.log.info("extension", entries=len(paths))
    tree = context.workspace / TREE
    copy_changes(root, tree, paths)
    release = f"{RELEASE_DIRECTORIES[config.format]}/extension-release.{name(config)}"
    intree.make_directories(tree, os.path.dirname(release))
    intree.write_bytes(tree, release, extension_release(config, base_os_release(root)).encode())
    if (epoch := config.source_date_epoch) is not None:
        for path in (release, os.path.dirname(release)):
            os.utime(tree / path, (epoch, epoch))
    await ddi.write(context, tree)
