"""What stands between a configuration and the same bytes on every rebuild (Reproducible=).

The tree is made reproducible by the `reproducible` stage (mkosi/tree.py) and every tool gets
SOURCE_DATE_EPOCH (build.reproducible_environment); what is left here are the things no option of
the tools Debian 12 ships can pin, each with why. `mkosi summary` prints them, and Reproducible=yes
refuses to build while there are any.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from mkosi.settings import OutputFormat

if TYPE_CHECKING:
    from mkosi.config import Config


def obstacles(config: Config) -> list[str]:
    """Why building `config` twice would give different bytes; empty when it would not."""
    reasons = []
    if config.source_date_epoch is None:
        reasons.append("no SourceDateEpoch=: every build stamps the time it ran at")
    if config.format is OutputFormat.raw_btrfs:
        reasons.append(
            "Format=raw_btrfs: mkfs.btrfs (btrfs-progs 6.2) draws random device and chunk-tree UUIDs "
            "and copies every file's change time from the tree, with no option to pin them"
        )
    if config.encrypt is not None:
        reasons.append("Encrypt=: LUKS2's volume key and key-slot salts must be random to protect anything")
    scripts = [
        s for s, path in (("mkosi.build", config.build_script), ("mkosi.postinst", config.postinst_script)) if path
    ]
    if scripts and not config.deterministic_scripts:
        reasons.append(
            f"{' and '.join(scripts)}: a script may write what it likes (times, random names); "
            "DeterministicScripts=yes declares that it writes the same files for the same sources"
        )
    return reasons


def frozen_clock(epoch: int | None) -> tuple[list[str], dict[str, str]]:
    """For SourceDateEpoch=: a command prefix and environment under which the command's clock stands
    still at the epoch, for tools that write the time of day and have no option to set it: sbsign
    (OpenSSL's PKCS#7 signingTime attribute) and objcopy (binutils 2.40 stamps the PE header's
    TimeDateStamp; SOURCE_DATE_EPOCH is not read there). libfaketime's absolute form freezes it."""
    if epoch is None:
        return [], {}
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return ["faketime", "-f", when], {"TZ": "UTC"}
