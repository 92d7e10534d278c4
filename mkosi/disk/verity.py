"""dm-verity for the root partition, built offline with veritysetup on files.

The hash tree goes into a partition of its own (the Discoverable Partitions Specification's
root-verity type). Its salt and superblock UUID come from the seed, so the same tree and seed give
the same root hash; the root hash names the two partitions (first and last 128 bits) so that the
initrd finds both from `roothash=` alone.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

from mkosi.architecture import Architecture
from mkosi.disk.partitions import Partition, Role, align, derive_uuid, partition_label, partition_type
from mkosi.errors import MkosiError
from mkosi.run import run

BLOCK = 4096


def salt(seed: uuid.UUID) -> str:
    """32 bytes, as veritysetup makes by default, but derived from the seed instead of random."""
    return derive_uuid(seed, "root-verity-salt-1").hex + derive_uuid(seed, "root-verity-salt-2").hex


def partition_uuids(root_hash: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The data and hash partitions' UUIDs: the first and last 128 bits of the root hash."""
    return uuid.UUID(hex=root_hash[:32]), uuid.UUID(hex=root_hash[-32:])


def pad(image: Path) -> int:
    """Grow the data image to its partition's size, so that the hash tree covers the whole partition."""
    size = align(image.stat().st_size)
    with image.open("r+b") as f:
        f.truncate(size)
    return size


async def format_hash_tree(data: Path, hashes: Path, seed: uuid.UUID, log: Any) -> str:
    """Write the hash tree of `data` into `hashes` (padded to 1 MiB); return the root hash."""
    result = await run(
        [
            "veritysetup",
            "format",
            f"--data-block-size={BLOCK}",
            f"--hash-block-size={BLOCK}",
            f"--salt={salt(seed)}",
            f"--uuid={derive_uuid(seed, 'root-verity-superblock')}",
            data,
            hashes,
        ],
        capture_stdout=True,
        log=log,
    )
    match = re.search(r"^Root hash:\s*([0-9a-f]{64})\s*$", result.stdout, re.MULTILINE)
    if match is None:
        raise MkosiError(f"veritysetup format printed no root hash:\n{result.stdout}")
    pad(hashes)
    return match[1]


# The Discoverable Partitions Specification's verity signature partition: a JSON object padded
# with NUL bytes to a multiple of 4 KiB.
SIGNATURE_ALIGNMENT = 4096


async def certificate_fingerprint(certificate: Path, scratch: Path, log: Any) -> str:
    """SHA-256 of the certificate's DER encoding: how systemd names the certificate a signature needs."""
    der = scratch / "certificate.der"
    await run(["openssl", "x509", "-in", certificate, "-outform", "DER", "-out", der], log=log)
    return hashlib.sha256(der.read_bytes()).hexdigest()


async def sign_root_hash(root_hash: str, key: Path, certificate: Path, scratch: Path, log: Any) -> bytes:
    """The signature partition's content for `root_hash`: a detached PKCS#7 signature of the root
    hash as hex text (what the kernel's dm-verity checks against its keyring, and what systemd
    passes to it), with the signer's certificate left out (the verifier has it) and no signed
    attributes (no signing time: RSA keys then give the same bytes every time)."""
    text, signature = scratch / "roothash.txt", scratch / "roothash.p7s"
    text.write_text(root_hash)
    await run(
        ["openssl", "smime", "-sign", "-binary", "-noattr", "-nocerts", "-in", text, "-inkey", key,
         "-signer", certificate, "-outform", "DER", "-out", signature],
        log=log,
    )  # fmt: skip
    document = {
        "rootHash": root_hash,
        "certificateFingerprint": await certificate_fingerprint(certificate, scratch, log),
        "signature": base64.b64encode(signature.read_bytes()).decode(),
    }
    content = json.dumps(document, separators=(",", ":")).encode()
    return content + b"\0" * (-len(content) % SIGNATURE_ALIGNMENT)


@dataclasses.dataclass(frozen=True)
class Protected:
    """A data partition behind verity: the partition named by its root hash, and its hash partition."""

    data: Partition
    hashes: Partition
    root_hash: str
    # The root-verity-signature partition, when signed.
    signature: Partition | None = None


@dataclasses.dataclass(frozen=True)
class Signer:
    """The key and certificate that sign a root hash (VerityKey=, VerityCertificate=)."""

    key: Path
    certificate: Path


async def protect(
    data: Partition, hashes: Path, seed: uuid.UUID, architecture: Architecture, log: Any, signer: Signer | None = None
) -> Protected:
    """The hash tree of the data partition's image, written into `hashes`, as a root-verity partition,
    and with `signer` its root hash signed in a root-verity-signature partition. Every image with
    verity (raw disks, extensions, portable services) goes through here."""
    assert data.image is not None
    root_hash = await format_hash_tree(data.image, hashes, seed, log)
    data_uuid, hash_uuid = partition_uuids(root_hash)
    hash_partition = Partition(
        role=Role.root_verity,
        label=partition_label(Role.root_verity, architecture),
        type=partition_type(Role.root_verity, architecture),
        uuid=hash_uuid,
        size=hashes.stat().st_size,
        image=hashes,
        read_only=True,
    )
    protected = Protected(dataclasses.replace(data, uuid=data_uuid, read_only=True), hash_partition, root_hash)
    if signer is None:
        return protected
    image = hashes.with_name(f"{Role.root_verity_sig}.img")
    image.write_bytes(await sign_root_hash(root_hash, signer.key, signer.certificate, hashes.parent, log))
    signature = Partition(
        role=Role.root_verity_sig,
        label=partition_label(Role.root_verity_sig, architecture),
        type=partition_type(Role.root_verity_sig, architecture),
        uuid=derive_uuid(seed, f"{Role.root_verity_sig}-partition"),
        size=align(image.stat().st_size),
        image=image,
        read_only=True,
    )
    return dataclasses.replace(protected, signature=signature)
