"""UEFI Secure Boot: signing EFI binaries with sbsign, and firmware variables that enforce it.

The key and certificate are the project's (mkosi.secure-boot.key/.crt); config.py already refuses
a key that group or others may read.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from mkosi.errors import MkosiError
from mkosi.reproducibility import frozen_clock
from mkosi.run import run

# The owner GUID recorded with our certificate in PK, KEK and db (any fixed GUID will do).
OWNER = "5c1e11a4-61c1-4a6e-a2b4-6d6b6f736921"


async def sign(source: Path, output: Path, key: Path, certificate: Path, log: Any, epoch: int | None = None) -> None:
    prefix, env = frozen_clock(epoch)
    await run([*prefix, "sbsign", "--key", key, "--cert", certificate, "--output", output, source], env=env, log=log)


def _virt_fw_vars() -> str:
    # Installed with pip (virt-firmware): on PATH, or next to the interpreter of a virtual environment.
    found = shutil.which("virt-fw-vars") or shutil.which("virt-fw-vars", path=str(Path(sys.executable).parent))
    if found is None:
        raise MkosiError("SecureBoot=yes: qemu needs virt-fw-vars to enroll the certificate (virt-firmware on PyPI)")
    return found


async def enroll(template: Path, output: Path, certificate: Path, log: Any) -> None:
    """A copy of the firmware's variable store with our certificate as PK, KEK and db, Secure Boot on."""
    await run(
        [
            _virt_fw_vars(),
            "--input", template,
            "--output", output,
            "--set-pk", OWNER, certificate,
            "--add-kek", OWNER, certificate,
            "--add-db", OWNER, certificate,
            "--secure-boot",
        ],
        log=log,
    )  # fmt: skip
