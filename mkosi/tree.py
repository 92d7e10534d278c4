"""Stages that adjust the image's tree after the distribution is installed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import anyio

from mkosi.config import Config
from mkosi.context import Context
from mkosi.run import run

# Left out of images built without WithDocs=.
DOCUMENTATION = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/lintian/*")


async def install_extra_trees(context: Context) -> None:
    for tree in context.config.extra_trees:
        await run(["cp", "-a", "--reflink=auto", f"{tree}/.", context.root], log=context.log)


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


def set_shadow_password(shadow: Path, user: str, hashed: str) -> None:
    lines = shadow.read_text().splitlines()
    pattern = re.compile(rf"^{re.escape(user)}:[^:]*:")
    for i, line in enumerate(lines):
        if pattern.match(line):
            fields = line.split(":")
            fields[1] = hashed
            lines[i] = ":".join(fields)
            break
    else:
        raise ValueError(f"{shadow} has no entry for {user}")
    shadow.write_text("\n".join(lines) + "\n")


def root_password(config: Config) -> str | None:
    """Password=, else the content of mkosi.rootpw without its final line break."""
    if config.password is None and config.password_file is not None:
        return config.password_file.read_text().removesuffix("\n")
    return config.password


async def configure_system(context: Context) -> None:
    config, root = context.config, context.root
    etc = root / "etc"
    if config.hostname:
        (etc / "hostname").write_text(config.hostname + "\n")
    else:
        # The bootstrap copies the build host's name; the image should not carry it.
        (etc / "hostname").unlink(missing_ok=True)
    if (password := root_password(config)) is not None:
        hashed = await hash_password(password, context) if password else ""
        set_shadow_password(etc / "shadow", "root", hashed)
    # Every machine made from the image gets its own identity on first boot.
    (etc / "machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "var/lib/systemd/random-seed").unlink(missing_ok=True)


async def clean_tree(context: Context) -> None:
    root = context.root
    # The bootstrap's copy of the build host's resolver configuration.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    if not context.config.with_docs:
        leftovers = [p for pattern in DOCUMENTATION for p in root.glob(pattern.lstrip("/"))]
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


def normalise_shadow_dates(shadow: Path, epoch: int) -> None:
    """The day of each password's last change (field 3), which the tools write as today, as the epoch's."""
    if not shadow.is_file():
        return
    day = str(epoch // 86400)
    lines = []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2]:
            fields[2] = day
        lines.append(":".join(fields))
    shadow.write_text("".join(f"{line}\n" for line in lines))


# openssh-server's postinst generates host keys: random, and the same on every machine made from
# the image. They go, and sshd's units make the missing ones (ssh-keygen -A) before they start.
SSH_HOST_KEYS = "etc/ssh/ssh_host_*_key*"
SSH_UNITS = ("ssh.service", "sshd.service", "ssh@.service", "sshd@.service")
SSH_KEYGEN_DROP_IN = "[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n"


def regenerate_ssh_host_keys(root: Path) -> list[str]:
    """Remove the tree's ssh host keys; returns the units given a drop-in that makes new ones."""
    keys = list(root.glob(SSH_HOST_KEYS))
    for key in keys:
        key.unlink()
    if not keys:
        return []
    units = [u for u in SSH_UNITS for d in ("usr/lib/systemd/system", "etc/systemd/system") if (root / d / u).exists()]
    for unit in dict.fromkeys(units):
        drop_in = root / "etc/systemd/system" / f"{unit}.d" / "mkosi-host-keys.conf"
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(SSH_KEYGEN_DROP_IN)
    return list(dict.fromkeys(units))


async def make_reproducible(context: Context) -> None:
    """The tree as the same inputs always make it, for SourceDateEpoch=: the last tree stage."""
    epoch = context.config.source_date_epoch
    assert epoch is not None
    root = context.root
    for shadow in ("etc/shadow", "etc/shadow-"):  # the tools' backup copy too
        normalise_shadow_dates(root / shadow, epoch)
    # ldconfig's aux-cache records the mtimes and inode numbers of the libraries it read.
    (root / "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)
    regenerate_ssh_host_keys(root)
    # Thousands of system calls: in a thread, so that the other builds of a matrix and Ctrl-C go on.
    clamped = await anyio.to_thread.run_sync(clamp_mtimes, root, epoch)
    context.log.info("clamped mtimes", files=clamped, epoch=epoch)
