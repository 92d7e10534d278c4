"""UEFI Secure Boot: signing EFI binaries with sbsign, and firmware variables that enforce it.

The key and certificate are the project's (mkosi.secure-boot.key/.crt); config.py already refuses
a key that group or others may read.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
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


async def generate_key(key: Path, certificate: Path, common_name: str, days: int, log: Any) -> None:
    """`mkosi genkey`: a new RSA key (mode 0600) and its self-signed certificate, for Secure Boot
    and verity signatures. Never replaces either file: a lost key cannot sign updates any more."""
    for path in (key, certificate):
        if os.path.lexists(path):
            raise MkosiError(f"{path} already exists: mkosi genkey never replaces a key or certificate")
        if not path.parent.is_dir():
            raise MkosiError(f"{path.parent} is not a directory: mkosi genkey cannot write {path.name} there")
    with tempfile.TemporaryDirectory(prefix="mkosi-genkey.") as scratch:
        new_key, new_certificate = Path(scratch) / "key", Path(scratch) / "crt"
        await run(
            ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", str(days), "-subj", f"/CN={common_name}", "-keyout", new_key, "-out", new_certificate],
            log=log,
        )  # fmt: skip
        _place(new_key, key, 0o600)
        try:
            _place(new_certificate, certificate, 0o644)
        except BaseException:
            key.unlink()
            raise
    log.info("wrote a key and certificate", key=str(key), certificate=str(certificate))


def _place(new: Path, final: Path, mode: int) -> None:
    """`new` as `final`, whole or not at all: copied next to it, then linked into place, which fails
    instead of replacing a file that appeared meanwhile."""
    descriptor, staged = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as f:
            f.write(new.read_bytes())
        os.link(staged, final)
    except OSError as e:
        raise MkosiError(f"cannot write {final}: {e.strerror or e}") from None
    finally:
        os.unlink(staged)


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
