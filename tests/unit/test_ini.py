from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mkosi.errors import ConfigError
from mkosi.ini import Assignment, Section, parse_ini, read_ini


def test_sections_assignments_and_lines() -> None:
    text = "# leading comment\n[Distribution]\nDistribution = fedora\n\n; other comment\n[Output]\nFormat=raw_btrfs\n"
    assert parse_ini(text, "f") == [
        Section("Distribution", 2),
        Assignment("Distribution", "Distribution", "fedora", 3),
        Section("Output", 6),
        Assignment("Output", "Format", "raw_btrfs", 7),
    ]


def test_continuation_lines_join_with_newline() -> None:
    text = "[Packages]\nPackages=\n        git\n\n        # a comment inside the list\n\tvim tmux\nWithDocs=yes\n"
    entries = parse_ini(text, "f")
    assert entries[1] == Assignment("Packages", "Packages", "\ngit\nvim tmux", 2)
    assert entries[2] == Assignment("Packages", "WithDocs", "yes", 7)


def test_value_keeps_inner_equals_and_spaces() -> None:
    (_, assignment) = parse_ini("[Validation]\nPassword = a=b c \n", "f")
    assert assignment == Assignment("Validation", "Password", "a=b c", 2)


def test_empty_value_and_repeated_keys_are_kept_in_order() -> None:
    entries = parse_ini("[Output]\nHostname=\nHostname=x\n", "f")
    assert [e.value for e in entries if isinstance(e, Assignment)] == ["", "x"]


def test_crlf_line_endings() -> None:
    assert parse_ini("[Output]\r\nFormat=tar\r\n", "f")[1] == Assignment("Output", "Format", "tar", 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Output]\ngarbage\n", "f:2: expected [Section], Key=Value or a comment, got 'garbage'"),
        ("[Output\n", "f:1: malformed section header '[Output'"),
        ("[]\n", "f:1: malformed section header '[]'"),
        ("[a]b]\n", "f:1: malformed section header '[a]b]'"),
        ("[Output]\n=yes\n", "f:2: missing key before '=' in '=yes'"),
        ("Format=tar\n", "f:1: 'Format=tar' appears before any [Section] header"),
        ("  indented\n", "f:1: continuation line without a preceding Key=Value line"),
        ("[Output]\n  indented\n", "f:2: continuation line without a preceding Key=Value line"),
    ],
)
def test_malformed_input(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_ini(text, "f")
    assert str(error.value) == message


def test_long_garbage_is_shortened() -> None:
    with pytest.raises(ConfigError) as error:
        parse_ini("[Output]\n" + "x" * 500, "f")
    assert len(str(error.value)) < 100


def test_read_ini_reports_undecodable_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(b"[Output]\nFormat=tar\nHostname=\xff\n")
    with pytest.raises(ConfigError, match=r"^bad.conf:3: file is not valid UTF-8$"):
        read_ini(path, "bad.conf")


def test_read_ini_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dir: cannot read file: "):
        read_ini(tmp_path, "dir")


def test_read_ini_skips_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.conf"
    path.write_bytes("\ufeff[Output]\nFormat=tar\n".encode())
    assert read_ini(path, "bom.conf")[0] == Section("Output", 1)


@given(st.text())
def test_fuzz_parse_ini_only_raises_config_error(text: str) -> None:
    try:
        entries = parse_ini(text, "fuzz")
    except ConfigError as e:
        assert str(e).startswith("fuzz:")
        assert "\n" not in str(e)
    else:
        assert all(isinstance(e, Section | Assignment) for e in entries)


@given(st.lists(st.sampled_from(["[Output]", "Key=v", "  more", "# c", "", "[X", "=", "a=b=c", "\t"])))
def test_fuzz_line_shapes(lines: list[str]) -> None:
    with contextlib.suppress(ConfigError):
        parse_ini("\n".join(lines), "fuzz")
