"""What a build's files are called: the image for its format and compression, everything published
next to it, and the temporary and set-aside names a build gives them on the way.

Every other module asks here; none spells a suffix itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkosi.config import Config
    from mkosi.settings import Compression, OutputFormat

LOG_SUFFIX = ".log"
NSPAWN_SUFFIX = ".nspawn"
ROOT_HASH_SUFFIX = ".roothash"
BMAP_SUFFIX = ".bmap"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.gpg"

# The suffixes of outputs, by format and by compression (OutputFormat.suffix and Compression.suffix).
RAW_SUFFIX = ".raw"
TAR_SUFFIX = ".tar"
CPIO_SUFFIX = ".cpio"
EFI_SUFFIX = ".efi"
# An OCI image layout packed into one uncompressed tar: what skopeo's oci-archive: transport reads.
OCI_ARCHIVE_SUFFIX = ".oci.tar"
COMPRESSION_SUFFIXES = {"none": "", "xz": ".xz", "zstd": ".zst", "gz": ".gz"}
# What systemd strips from an image's file name to find its sidecars: image.raw.xz -> image.roothash.
_STRIPPED = tuple(s for s in COMPRESSION_SUFFIXES.values() if s)

# The prefixes of a build's own files next to its outputs, so that leftovers are recognised as its.
_STAGED = ".mkosi-tmp."
_ASIDE = ".mkosi-old."


def versioned_stem(image_id: str | None, image_version: str | None) -> str | None:
    """ImageId_ImageVersion (or either alone), as mkosi v13 and later named the default output, the
    partitions of an A/B slot and its kernel: what systemd-sysupdate's `ID_@v` patterns match."""
    if image_id is None:
        return f"image_{image_version}" if image_version else None
    return f"{image_id}_{image_version}" if image_version else image_id


def image_file_name(stem: str, format: OutputFormat, compress: Compression) -> str:
    """`stem` as an output of `format`: a directory (a tree, an OCI layout) keeps it, files get
    `.raw`/`.tar`/`.cpio`/`.efi` and `.xz`/`.zst`."""
    if format.is_directory:
        return stem
    return stem + format.suffix + compress.suffix


def oci_archive_name(stem: str) -> str:
    """An OCI layout published as one file (a release): `skopeo copy oci-archive:NAME.oci.tar ...`."""
    return stem + OCI_ARCHIVE_SUFFIX


def image_stem(output: Path) -> str:
    """The output's name without its format and compression suffixes."""
    name = output.name.removesuffix(OCI_ARCHIVE_SUFFIX)
    for suffix in _STRIPPED:
        name = name.removesuffix(suffix)
    for suffix in (RAW_SUFFIX, TAR_SUFFIX, CPIO_SUFFIX, EFI_SUFFIX):
        name = name.removesuffix(suffix)
    return name


def sidecar(output: Path, suffix: str) -> Path:
    """`<image><suffix>` next to the output, named as systemd-importd and systemd-dissect look for it."""
    return output.with_name(image_stem(output) + suffix)


def log_path(output: Path) -> Path:
    return output.with_name(output.name + LOG_SUFFIX)


def staged_path(final: Path) -> Path:
    """Where an output is written before it is published by renaming it to `final`."""
    return final.with_name(_STAGED + final.name)


def aside_path(final: Path) -> Path:
    """Where -f moves an earlier output until the new one is published."""
    return final.with_name(_ASIDE + final.name)


def release_files(config: Config) -> dict[Path, bool]:
    """Every file a build of this output may publish next to it (for -f and clean), and whether
    this configuration writes it."""
    return {
        sidecar(config.output, NSPAWN_SUFFIX): config.nspawn_settings is not None,
        sidecar(config.output, ROOT_HASH_SUFFIX): bool(config.verity),
        sidecar(config.output, BMAP_SUFFIX): config.bmap,
        config.output.parent / SUMS: config.checksum,
        config.output.parent / SIGNATURE: config.sign,
    }


def published_paths(config: Config) -> dict[Path, bool]:
    """Everything a build of this output may publish, and whether this configuration writes it."""
    return {config.output: True, log_path(config.output): True, **release_files(config)}
