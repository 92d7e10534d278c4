"""LUKS2 encryption of partitions, built offline: no device-mapper, no loop devices.

The filesystem is made 32 MiB smaller than its partition; `cryptsetup reencrypt --encrypt` then
encrypts the file in place, moving the data up to make room for the LUKS2 header. The passphrase
reaches cryptsetup on its standard input only: never on a command line, in the log or in a file
outside the project's own mkosi.passphrase.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from mkosi.concurrency import cpu_heavy
from mkosi.config import Config, Encrypt
from mkosi.disk.partitions import MiB, Role
from mkosi.run import run

# Room reencrypt needs at the end of the filesystem image: the LUKS2 header (16 MiB) and the moved data.
SLACK = 32 * MiB


def encrypted_roles(config: Config) -> frozenset[Role]:
    """Which partitions are encrypted: the data partitions, and with Encrypt=all the root too; never the ESP."""
    if config.encrypt is None:
        return frozenset()
    roles = {Role.home, Role.srv}
    if config.encrypt is Encrypt.all:
        roles.add(Role.root)
    return frozenset(roles)


def read_passphrase(config: Config) -> bytes:
    """The passphrase as typed at boot: the file's content without its final line break."""
    assert config.passphrase is not None
    return config.passphrase.read_bytes().removesuffix(b"\n")


def pbkdf_options(config: Config) -> list[str]:
    options = [f"--pbkdf={config.key_derivation}"]
    if config.key_derivation_time is not None:
        options.append(f"--iter-time={config.key_derivation_time}")
    return options


async def encrypt(image: Path, config: Config, volume_uuid: uuid.UUID, label: str, log: Any) -> None:
    """Turn the filesystem image (which must leave SLACK bytes unused at its end) into a LUKS2 volume."""
    # Benchmarking the key derivation function keeps a core busy.
    async with cpu_heavy():
        await run(
            [
                "cryptsetup",
                "reencrypt",
                "--encrypt",
                "--type=luks2",
                f"--reduce-device-size={SLACK // MiB}M",
                "--batch-mode",
                f"--uuid={volume_uuid}",
                f"--label={label}",
                *pbkdf_options(config),
                "--key-file=-",
                image,
            ],
            input=read_passphrase(config),
            log=log,
        )
