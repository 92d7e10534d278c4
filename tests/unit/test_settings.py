from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mkosi.config import Config
from mkosi.distributions import Distribution
from mkosi.settings import (
    BY_KEY,
    PRIMARY,
    SECTIONS,
    SETTINGS,
    Compression,
    Kind,
    OutputFormat,
    enum_parser,
    format_size,
    parse_boolean,
    parse_compression,
    parse_counter,
    parse_hostname,
    parse_items,
    parse_path,
    parse_paths,
    parse_seconds,
    parse_size,
    parse_words,
    parse_xz,
)

# ---- the table ----


def test_config_fields_and_table_dests_correspond_one_to_one() -> None:
    # warnings is no setting: what the loader noticed while reading the files.
    names = [f.name for f in dataclasses.fields(Config) if f.name != "warnings"]
    assert len(names) == len(PRIMARY)
    assert set(names) == set(PRIMARY)
    counts = Counter(s.dest for s in SETTINGS)
    # Spellings whose values mean something else write another's field: XZ= is Compress=xz, and
    # SourceFileTransfer=copy-git-cached is UseGitFiles=yes.
    assert {dest: n for dest, n in counts.items() if n > 1} == {"compress": 2, "use_git_files": 2}
    assert [s.key for s in SETTINGS if s.dest == "compress"] == ["Compress", "XZ"]
    assert [s.key for s in SETTINGS if s.dest == "use_git_files"] == ["UseGitFiles", "SourceFileTransfer"]


def test_flags_and_keys_are_unique() -> None:
    flags = [f for s in SETTINGS for f in (s.short, s.long, s.negation) if f]
    assert len(flags) == len(set(flags))
    keyed = [(s.section, s.key) for s in SETTINGS if s.key]
    assert len(keyed) == len(set(keyed)) == len(BY_KEY)
    # Keys are unique across sections too, so "it belongs in [X]" hints are unambiguous.
    assert len({key for _, key in keyed}) == len(keyed)


def test_sections_and_keys_go_together() -> None:
    for s in SETTINGS:
        assert (s.section is None) == (s.key is None), s.dest
        assert s.section is None or s.section in SECTIONS
        assert s.long is None or s.long.startswith("--")
        assert s.short is None or (len(s.short) == 2 and s.short.startswith("-"))
        assert s.default is None or s.default_factory is None, s.dest
        assert s.help, s.dest
        if s.kind is Kind.list:
            assert s.default == (), s.dest


def test_command_line_only_settings() -> None:
    cli_only = {s.dest for s in SETTINGS if s.key is None}
    assert cli_only == {"directory", "default_path", "passphrase", "password_file", "verbose", "log_format"}
    assert PRIMARY["passphrase"].long is None
    assert PRIMARY["passphrase"].discover == "mkosi.passphrase"
    assert PRIMARY["password_file"].long is None and PRIMARY["password_file"].discover == "mkosi.rootpw"


def test_2017_key_names() -> None:
    # The keys of the 2017 tool, which existing mkosi.default files use.
    keys_2017 = {
        "Distribution": "Distribution Release Mirror Repositories",
        "Output": "Format Output Force Bootable SecureBoot SecureBootKey SecureBootCertificate ReadOnly "
        "Encrypt Verity Compress XZ Hostname KernelCommandLine",
        "Packages": "Packages WithDocs WithTests Cache ExtraTrees BuildScript BuildSources BuildPackages "
        "PostInstallationScript WithNetwork NSpawnSettings",
        "Partitions": "RootSize ESPSize SwapSize HomeSize SrvSize",
        "Validation": "CheckSum Sign Key Password",
    }
    assert set(BY_KEY) >= {(section, key) for section, keys in keys_2017.items() for key in keys.split()}


def test_output_format_is_raw() -> None:
    assert {f for f in OutputFormat if f.is_raw} == {
        OutputFormat.raw_gpt,
        OutputFormat.raw_btrfs,
        OutputFormat.raw_squashfs,
        OutputFormat.raw_erofs,
    }
    assert {f for f in OutputFormat if f.has_read_only_root} == {OutputFormat.raw_squashfs, OutputFormat.raw_erofs}
    # An OCI layout is a directory on the host, but its layer is compressed: not a tree.
    assert OutputFormat.oci.is_directory and not OutputFormat.oci.is_tree and not OutputFormat.oci.boots


# ---- parsers ----


@pytest.mark.parametrize("word", ["yes", "YES", "true", "True", "1", "on", " On "])
def test_parse_boolean_true(word: str) -> None:
    assert parse_boolean(word) is True


@pytest.mark.parametrize("word", ["no", "No", "false", "FALSE", "0", "off"])
def test_parse_boolean_false(word: str) -> None:
    assert parse_boolean(word) is False


@pytest.mark.parametrize("word", ["", "y", "2", "enable", "yess"])
def test_parse_boolean_rejects(word: str) -> None:
    with pytest.raises(ValueError, match="invalid boolean"):
        parse_boolean(word)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("1024", 1024),
        ("1K", 1024),
        ("1k", 1024),
        ("3M", 3 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1T", 1024**4),
        (" 4G ", 4 * 1024**3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0", "must be positive"),
        ("0G", "must be positive"),
        ("1000", "must be a multiple of 512"),
        ("1", "must be a multiple of 512"),
        ("-512", "use bytes or a number"),
        ("1.5G", "use bytes or a number"),
        ("1X", "use bytes or a number"),
        ("1GB", "use bytes or a number"),
        ("", "use bytes or a number"),
        ("١٢٣", "use bytes or a number"),
        ("9" * 5000, "use bytes or a number"),
    ],
)
def test_parse_size_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_size(text)


@given(st.integers(min_value=1, max_value=2**40))
def test_format_size_round_trips(blocks: int) -> None:
    assert parse_size(format_size(blocks * 512)) == blocks * 512


def test_format_size() -> None:
    assert [format_size(n) for n in (512, 1024, 3 * 1024**2, 1536 * 1024**2, 1024**4)] == [
        "512",
        "1K",
        "3M",
        "1536M",
        "1T",
    ]


@pytest.mark.parametrize("name", ["image", "my-image", "a.b.c", "x" * 63, "A1-b2", "a" * 30 + "." + "b" * 30])
def test_parse_hostname(name: str) -> None:
    assert parse_hostname(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-image", "image-", "a..b", ".a", "a.", "im_age", "im age", "x" * 64, "a" * 40 + "." + "b" * 40, "hôte"],
)
def test_parse_hostname_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="invalid hostname"):
        parse_hostname(name)


def test_parse_items_splits_on_commas_and_whitespace() -> None:
    assert parse_items("a,b c\n d,,e ") == ("a", "b", "c", "d", "e")
    assert parse_items("\n") == ()


def test_parse_words_and_paths() -> None:
    assert parse_words(" quiet  console=ttyS0\nrw") == ("quiet", "console=ttyS0", "rw")
    assert parse_paths("a /b\n c") == (Path("a"), Path("/b"), Path("c"))


def test_parse_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert parse_path("~/x") == Path("/home/someone/x")
    assert parse_path("~nosuchuser-xyz/x") == Path("~nosuchuser-xyz/x")
    assert parse_path(" rel/x ") == Path("rel/x")
    with pytest.raises(ValueError, match="NUL"):
        parse_path("a\0b")


def test_enum_parser_with_aliases() -> None:
    parse = enum_parser(OutputFormat, {"raw_ext4": OutputFormat.raw_gpt})
    assert parse("raw_ext4") is OutputFormat.raw_gpt
    assert parse("Raw_Btrfs") is OutputFormat.raw_btrfs
    with pytest.raises(ValueError) as error:
        parse("raw_xfs")
    assert str(error.value) == (
        "invalid value 'raw_xfs' "
        "(choose from raw_gpt, raw_btrfs, raw_squashfs, raw_erofs, directory, subvolume, tar, cpio, "
        "uki, esp, sysext, confext, portable, oci)"
    )
    assert enum_parser(Distribution, {"archlinux": Distribution.arch})("archlinux") is Distribution.arch


def test_parse_compression() -> None:
    assert parse_compression("yes") is Compression.zstd
    assert parse_compression("no") is Compression.none
    assert parse_compression("xz") is Compression.xz
    assert parse_compression("ZSTD") is Compression.zstd
    assert parse_compression("gz") is parse_compression("gzip") is Compression.gz
    with pytest.raises(ValueError, match=r"choose from none, xz, zstd, gz"):
        parse_compression("lz4")


def test_parse_xz() -> None:
    assert parse_xz("yes") is Compression.xz
    assert parse_xz("no") is Compression.none
    with pytest.raises(ValueError):
        parse_xz("xz")


def test_parse_counter() -> None:
    assert [parse_counter(v) for v in ("yes", "no", "0", "2")] == [1, 0, 0, 2]
    for bad in ("-1", "many", "1000", "²"):
        with pytest.raises(ValueError):
            parse_counter(bad)


def test_parse_seconds() -> None:
    assert [parse_seconds(v) for v in ("1", " 60 ", "3600")] == [1, 60, 3600]
    # 0 would mean no timeout to apt and dnf; units and fractions are not what apt reads.
    for bad in ("0", "3601", "-5", "1.5", "5s", "٣", ""):
        with pytest.raises(ValueError, match="seconds, from 1 to 3600"):
            parse_seconds(bad)


@given(st.text())
def test_fuzz_parsers_raise_only_value_error(text: str) -> None:
    for s in SETTINGS:
        with contextlib.suppress(ValueError):
            s.parse(text)
