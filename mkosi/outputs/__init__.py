"""Output writers, one module per format; each stages its output for publication."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mkosi import base_image
from mkosi.config import Config, OutputFormat
from mkosi.context import Context
from mkosi.outputs import cpio, directory, disk, extension, oci, portable, subvolume, tar

Writer = Callable[[Context], Awaitable[None]]
Check = Callable[[Config, Any], Awaitable[None]]

WRITERS: dict[OutputFormat, Writer] = {
    OutputFormat.directory: directory.write,
    OutputFormat.subvolume: subvolume.write,
    OutputFormat.tar: tar.write,
    OutputFormat.cpio: cpio.write,
    OutputFormat.raw_gpt: disk.write,
    OutputFormat.raw_btrfs: disk.write,
    OutputFormat.raw_squashfs: disk.write,
    OutputFormat.raw_erofs: disk.write,
    OutputFormat.esp: disk.write,
    OutputFormat.uki: disk.write_uki,
    OutputFormat.sysext: extension.write,
    OutputFormat.confext: extension.write,
    OutputFormat.portable: portable.write,
    OutputFormat.oci: oci.write,
}

# Checks that must pass before a build of the format starts.
CHECKS: dict[OutputFormat, Check] = {
    OutputFormat.subvolume: subvolume.check,
    OutputFormat.sysext: base_image.check,
    OutputFormat.confext: base_image.check,
    OutputFormat.portable: base_image.check,
}
