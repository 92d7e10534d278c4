"""Files published next to the output: `<image>.nspawn`, and SHA256SUMS with its gpg signature.

They run after the output is staged, so the checksums cover exactly what will be published (the
image, `.roothash`, `.nspawn`), under the names it will be published as; the build log is not an
output and is left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mkosi import checksums
from mkosi.config import Config
from mkosi.context import Context

NSPAWN_SUFFIX = ".nspawn"
ROOT_HASH_SUFFIX = ".roothash"


# What systemd strips from an image's file name to find its sidecars: image.raw.xz -> image.roothash.
_COMPRESSION_SUFFIXES = (".xz", ".zst", ".gz")
_IMAGE_SUFFIXES = (".raw", ".tar")


def image_stem(config: Config) -> str:
    """The output's name without its format and compression suffixes."""
    name = config.output.name
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffix in _IMAGE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def sidecar(config: Config, suffix: str) -> Path:
    """`<image><suffix>` next to the output, named as systemd-importd and systemd-dissect look for it."""
    return config.output.with_name(image_stem(config) + suffix)


def release_files(config: Config) -> dict[Path, bool]:
    """Every file a build of this output may publish next to it (for -f and clean), and whether
    this configuration writes it."""
    return {
        sidecar(config, NSPAWN_SUFFIX): config.nspawn_settings is not None,
        sidecar(config, ROOT_HASH_SUFFIX): config.verity,
        config.output.parent / checksums.SUMS: config.checksum,
        config.output.parent / checksums.SIGNATURE: config.sign,
    }


async def write(context: Context) -> None:
    config = context.config
    if config.nspawn_settings is not None:
        shutil.copyfile(config.nspawn_settings, context.stage_output(sidecar(config, NSPAWN_SUFFIX)))
    if not config.checksum:
        return
    # A directory output is a tree, not a file: only the files next to it can be summed.
    artifacts = [
        await checksums.describe_artifact(staged, final.name)
        for final, staged in sorted(context.staged.items())
        if staged.is_file()
    ]
    sums = context.stage_output(config.output.parent / checksums.SUMS)
    sums.write_text(checksums.checksums(artifacts))
    if config.sign:
        signature = context.stage_output(config.output.parent / checksums.SIGNATURE)
        await checksums.sign(sums, config.key, context.log, signature)
