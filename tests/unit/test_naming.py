"""What a build's files are called, asked of mkosi.naming by every module."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi import naming
from mkosi.config import Compression, OutputFormat, parse_args


@pytest.mark.parametrize(
    ("format", "compress", "name"),
    [
        (OutputFormat.directory, Compression.none, "image"),
        (OutputFormat.subvolume, Compression.none, "image"),
        (OutputFormat.tar, Compression.none, "image.tar"),
        (OutputFormat.tar, Compression.zstd, "image.tar.zst"),
        (OutputFormat.raw_gpt, Compression.xz, "image.raw.xz"),
        (OutputFormat.tar, Compression.gz, "image.tar.gz"),
        (OutputFormat.raw_squashfs, Compression.none, "image.raw"),
        (OutputFormat.raw_erofs, Compression.zstd, "image.raw.zst"),
        # An OCI layout is a directory; Compress= compresses its layer, not its name.
        (OutputFormat.oci, Compression.zstd, "image"),
    ],
)
def test_image_file_names(format: OutputFormat, compress: Compression, name: str, tmp_path: Path) -> None:
    assert naming.image_file_name("image", format, compress) == name
    # The default output is that name, in the project directory.
    argv = ["-C", str(tmp_path), "-t", format.value]
    if compress is not Compression.none:
        argv.append(f"--compress={compress}")
    assert parse_args(argv)[1].output == tmp_path / name


@pytest.mark.parametrize(
    ("output", "stem"),
    [
        ("image.raw.xz", "image"),
        ("a.b.tar.zst", "a.b"),
        ("tree", "tree"),
        ("image.raw.gz", "image"),
        ("x.img", "x.img"),
        ("debian.oci.tar", "debian"),
    ],
)
def test_sidecars_are_named_from_the_stem_as_systemd_looks_for_them(output: str, stem: str) -> None:
    path = Path("/out") / output
    assert naming.image_stem(path) == stem
    assert naming.sidecar(path, naming.ROOT_HASH_SUFFIX) == Path(f"/out/{stem}.roothash")
    # The log keeps the whole name: two outputs with one stem never share a log.
    assert naming.log_path(path) == Path(f"/out/{output}.log")


def test_published_paths_name_what_this_configuration_writes(tmp_path: Path) -> None:
    config = parse_args(["-C", str(tmp_path), "-t", "raw_squashfs", "--verity", "--checksum", "--xz"])[1]
    published = naming.published_paths(config)
    assert published == {
        tmp_path / "image.raw.xz": True,
        tmp_path / "image.raw.xz.log": True,
        tmp_path / "image.nspawn": False,
        tmp_path / "image.roothash": True,
        tmp_path / "image.bmap": False,
        tmp_path / "SHA256SUMS": True,
        tmp_path / "SHA256SUMS.gpg": False,
    }


def test_an_explicit_oci_output_gets_no_compression_suffix(tmp_path: Path) -> None:
    argv = ["-C", str(tmp_path), "-t", "oci", "--compress=zstd", "-o", "layout"]
    assert parse_args(argv)[1].output == tmp_path / "layout"
    assert naming.oci_archive_name("debian") == "debian.oci.tar"
