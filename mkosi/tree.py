"""Stages that adjust the image's tree after the distribution is installed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path, PurePosixPath

import anyio

from mkosi import base_image, intree, ownership
from mkosi.config import CleanPackageMetadata, Config, TreeSource
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.run import run
from mkosi.settings import IMAGE_TOP
from mkosi.workspace import remove_tree

# Left out of images built without WithDocs=.
DOCUMENTATION = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/lintian/*")


async def install_extra_trees(context: Context) -> None:
    """Each extra tree over the image, copied as it is: links stay links (whatever they point to),
    device nodes, set-id bits, hard links, sparse files and any file name survive."""
    for tree in context.config.extra_trees:
        await install_tree(context, tree.source, tree.target)


async def install_skeleton_trees(context: Context) -> None:
    """Each skeleton tree into the still empty image, before the distribution's packages, as
    mkosi v4-v14 did with mkosi.skeleton/ (package managers' configuration, for instance)."""
    context.root.mkdir(parents=True, exist_ok=True)
    for tree in context.config.skeleton_trees:
        await install_tree(context, tree.source, tree.target)


def tree_digest_paths(trees: tuple[TreeSource, ...]) -> list[str]:
    """What stands for the trees' targets in a stage key (their contents are hashed separately)."""
    return [str(tree.target) for tree in trees]


async def install_tree(context: Context, tree: Path, target: PurePosixPath = IMAGE_TOP) -> None:
    # cp -a straight into the image would write through the image's links to the host (a file of
    # the tree over etc/localtime -> /usr/share/zoneinfo/UTC overwrote the host's zone file). cp -a
    # into an empty directory next to the image has no link to write through; that copy is then
    # moved into the image with its links followed inside it.
    incoming = context.root.with_name(f"{context.root.name}.incoming")
    # ExtraTrees=SRC:TARGET: the copy goes below TARGET inside `incoming`, which merges like any tree.
    destination = incoming.joinpath(*target.parts[1:])
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        await run(["cp", "-a", "--reflink=auto", "--no-target-directory", f"{tree}/.", destination], log=context.log)
        await anyio.to_thread.run_sync(intree.merge, incoming, context.root)
    finally:
        with anyio.CancelScope(shield=True):
            await remove_tree(incoming)


def reproducible_salt(config: Config) -> list[str]:
    """For SourceDateEpoch=: a salt that only depends on the image's seed, so that the same password
    hashes to the same /etc/shadow line; openssl picks a random one otherwise."""
    if config.source_date_epoch is None:
        return []
    digest = hashlib.sha256(config.seed.bytes + b"root password salt").digest()
    # crypt(3) salts are made of [a-zA-Z0-9./].
    return ["-salt", base64.b64encode(digest).decode().replace("+", ".")[:16]]


async def hash_password(password: str, context: Context) -> str:
    # The password goes through standard input: it must never show up in a process list.
    result = await run(
        ["openssl", "passwd", "-6", *reproducible_salt(context.config), "-stdin"],
        input=password.encode() + b"\n",
        capture_stdout=True,
        log=context.log,
    )
    return result.stdout.strip()


SHADOW = "etc/shadow"


def with_password(shadow: str, user: str, hashed: str) -> str:
    """The shadow file's text with `user`'s password hash replaced by `hashed`."""
    lines = shadow.splitlines()
    pattern = re.compile(rf"^{re.escape(user)}:[^:]*:")
    for i, line in enumerate(lines):
        if pattern.match(line):
            fields = line.split(":")
            fields[1] = hashed
            lines[i] = ":".join(fields)
            return "\n".join(lines) + "\n"
    raise MkosiError(f"/{SHADOW} in the image has no entry for {user}: cannot set its password")


def set_shadow_password(root: Path, user: str, hashed: str) -> None:
    text = intree.read_bytes(root, SHADOW)
    if text is None:
        raise MkosiError(f"the image has no /{SHADOW} (a regular file): cannot set {user}'s password")
    shadow = with_password(text.decode(errors="surrogateescape"), user, hashed)
    intree.write_bytes(root, SHADOW, shadow.encode(errors="surrogateescape"), mode=0o640)


# agetty logging root in without asking, for the units a booted image runs on its consoles.
AUTOLOGIN_UNITS = ("console-getty.service", "getty@.service", "serial-getty@.service")
AUTOLOGIN_DROP_IN = (
    "[Service]\nExecStart=\nExecStart=-/sbin/agetty -o '-f -p -- \\\\u' --noclear --autologin root --keep-baud "
    "- 115200,38400,9600 $TERM\n"
)


def write_autologin(root: Path) -> None:
    for unit in AUTOLOGIN_UNITS:
        intree.make_directories(root, f"etc/systemd/system/{unit}.d")
        intree.write_bytes(root, f"etc/systemd/system/{unit}.d/autologin.conf", AUTOLOGIN_DROP_IN.encode())


def with_image_fields(os_release: str, fields: dict[str, str]) -> str:
    """os-release with IMAGE_ID=/IMAGE_VERSION= set (replacing any the distribution wrote)."""
    kept = [line for line in os_release.splitlines() if line.partition("=")[0] not in fields]
    return "".join(f"{line}\n" for line in (*kept, *(f"{k}={v}" for k, v in fields.items())))


def write_image_fields(root: Path, config: Config) -> None:
    fields = {k: v for k, v in (("IMAGE_ID", config.image_id), ("IMAGE_VERSION", config.image_version)) if v}
    if not fields:
        return
    # /etc/os-release is normally a link to ../usr/lib/os-release, followed inside the image.
    path = "usr/lib/os-release" if intree.is_regular_file(root, "usr/lib/os-release") else "etc/os-release"
    text = (intree.read_bytes(root, path) or b"").decode(errors="surrogateescape")
    intree.write_bytes(root, path, with_image_fields(text, fields).encode(errors="surrogateescape"))


def root_password(config: Config) -> str | None:
    """Password=, else the content of mkosi.rootpw without its final line break."""
    if config.password is None and config.password_file is not None:
        return config.password_file.read_text().removesuffix("\n")
    return config.password


async def configure_system(context: Context) -> None:
    # Every path through intree: mkosi.extra, the build's output and mkosi.postinst may have put
    # links at any of these paths, pointing at the host's files.
    config, root = context.config, context.root
    if config.hostname:
        intree.write_bytes(root, "etc/hostname", f"{config.hostname}\n".encode())
    else:
        # The bootstrap copies the build host's name; the image should not carry it.
        intree.remove(root, "etc/hostname")
    if (password := root_password(config)) is not None:
        if config.password_is_hashed or not password:
            hashed = password  # empty: no root password, as in every mkosi of the mkosi.default era
        else:
            hashed = await hash_password(password, context)
        set_shadow_password(root, "root", hashed)
    if config.autologin:
        write_autologin(root)
    write_image_fields(root, config)
    # Every machine made from the image gets its own identity on first boot.
    intree.write_bytes(root, "etc/machine-id", b"")
    # Debian links it to /etc/machine-id; only a file of its own is an identity.
    if intree.is_regular_file(root, "var/lib/dbus/machine-id"):
        intree.remove(root, "var/lib/dbus/machine-id")
    intree.remove(root, "var/lib/systemd/random-seed")


def documentation(root: Path) -> list[Path]:
    """What WithDocs=no leaves out, found in the image's own directories (a link to elsewhere,
    such as the host's /usr/share/doc, is followed inside the image)."""
    found = []
    for pattern in DOCUMENTATION:
        parent = intree.directory(root, pattern.removesuffix("/*"))
        found += sorted(parent.iterdir()) if parent is not None else []
    return found


# The package managers' databases and caches (CleanPackageMetadata=), each with the programs whose
# presence makes it worth keeping under "auto": rpm's database serves rpm, dnf and zypper alike.
PACKAGE_METADATA = {
    ("var/lib/apt", "var/cache/apt", "var/log/apt"): ("usr/bin/apt",),
    ("var/lib/dpkg", "var/log/dpkg.log"): ("usr/bin/dpkg", "usr/bin/apt"),
    ("var/lib/dnf", "var/cache/dnf", "var/log/dnf.log"): ("usr/bin/dnf",),
    ("var/lib/rpm", "usr/lib/sysimage/rpm"): ("usr/bin/rpm", "usr/bin/dnf", "usr/bin/zypper"),
    ("var/lib/zypp", "var/cache/zypp"): ("usr/bin/zypper",),
    ("var/lib/pacman", "var/cache/pacman"): ("usr/bin/pacman",),
}


def package_metadata(root: Path, when: CleanPackageMetadata) -> list[Path]:
    if when is CleanPackageMetadata.no:
        return []
    found = []
    for paths, users in PACKAGE_METADATA.items():
        if when is CleanPackageMetadata.auto and any(intree.resolve(root, user).exists() for user in users):
            continue
        found += [p for path in paths if ownership.exists(p := intree.resolve(root, path, follow_last=False))]
    return found


def removed_files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    """RemoveFiles=: what each pattern names, its directory found inside the image (never through a
    link to the host), its last component matched as a glob."""
    found = []
    for pattern in patterns:
        path = PurePosixPath(pattern)
        parent = intree.directory(root, str(path.parent))
        if parent is not None:
            found += sorted(parent.glob(path.name))
    return found


async def clean_tree(context: Context) -> None:
    root, config = context.root, context.config
    base = base_image.recorded(context)
    # The bootstrap's copy of the build host's resolver configuration.
    if "etc/resolv.conf" not in base:
        intree.remove(root, "etc/resolv.conf")
    leftovers = [] if config.with_docs else documentation(root)
    leftovers += removed_files(root, config.remove_files) + package_metadata(root, config.clean_package_metadata)
    # What the build added goes; the base's own files stay.
    leftovers = [path for path in leftovers if str(path.relative_to(root)) not in base]
    if leftovers:
        await run(["rm", "-rf", "--", *leftovers], log=context.log)


def clamp_mtimes(root: Path, epoch: int) -> int:
    """Every mtime (and atime) later than `epoch` set to it, links themselves included; older package
    files keep theirs, as Debian's reproducible builds do. Returns how many were clamped."""
    clamped = 0
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames, ""):
            path = os.path.join(directory, name) if name else directory
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                clamped += 1
    return clamped


def with_change_dates(shadow: str, epoch: int) -> str:
    """The day of each password's last change (field 3), which the tools write as today, as the epoch's."""
    day = str(epoch // 86400)
    lines = []
    for line in shadow.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2]:
            fields[2] = day
        lines.append(":".join(fields))
    return "".join(f"{line}\n" for line in lines)


def normalise_shadow_dates(root: Path, path: str, epoch: int) -> None:
    text = intree.read_bytes(root, path)
    if text is not None:
        shadow = with_change_dates(text.decode(errors="surrogateescape"), epoch)
        intree.write_bytes(root, path, shadow.encode(errors="surrogateescape"), mode=0o640)


# openssh-server's postinst generates host keys: random, and the same on every machine made from
# the image. They go, and sshd's units make the missing ones (ssh-keygen -A) before they start.
SSH_HOST_KEYS = "etc/ssh/ssh_host_*_key*"
SSH_UNITS = ("ssh.service", "sshd.service", "ssh@.service", "sshd@.service")
SSH_KEYGEN_DROP_IN = "[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n"


def regenerate_ssh_host_keys(root: Path) -> list[str]:
    """Remove the tree's ssh host keys; returns the units given a drop-in that makes new ones.
    Found inside the image (intree): an etc/ssh linked to the host's must not cost the host its keys."""
    ssh = intree.directory(root, "etc/ssh")
    keys = list(ssh.glob(SSH_HOST_KEYS.removeprefix("etc/ssh/"))) if ssh is not None else []
    for key in keys:
        key.unlink()  # a link itself, never what it points to
    if not keys:
        return []
    places = ("usr/lib/systemd/system", "etc/systemd/system")
    units = list(dict.fromkeys(u for u in SSH_UNITS for d in places if intree.resolve(root, f"{d}/{u}").exists()))
    for unit in units:
        intree.make_directories(root, f"etc/systemd/system/{unit}.d")
        intree.write_bytes(root, f"etc/systemd/system/{unit}.d/mkosi-host-keys.conf", SSH_KEYGEN_DROP_IN.encode())
    return units


async def make_reproducible(context: Context) -> None:
    """The tree as the same inputs always make it, for SourceDateEpoch=: the last tree stage."""
    epoch = context.config.source_date_epoch
    assert epoch is not None
    root = context.root
    # A base's own files are as its build made them reproducible already.
    base = base_image.recorded(context)
    for shadow in (SHADOW, f"{SHADOW}-"):  # the tools' backup copy too
        if shadow not in base:
            normalise_shadow_dates(root, shadow, epoch)
    # ldconfig's aux-cache records the mtimes and inode numbers of the libraries it read.
    intree.remove(root, "var/cache/ldconfig/aux-cache")
    if "etc/ssh" not in base:
        regenerate_ssh_host_keys(root)
    # Thousands of system calls: in a thread, so that the other builds of a matrix and Ctrl-C go on.
    clamped = await anyio.to_thread.run_sync(clamp_mtimes, root, epoch)
    context.log.info("clamped mtimes", files=clamped, epoch=epoch)
