"""Portable service images: the units portablectl would attach, and PORTABLE_PREFIXES=."""

from __future__ import annotations

from pathlib import Path

from mkosi.outputs.portable import add_portable_prefixes, matching_units, prefix


def test_the_prefix_is_the_file_name_up_to_the_first_underscore() -> None:
    assert prefix(Path("/out/foobar_47.11.raw")) == "foobar"
    assert prefix(Path("foobar.raw.zst")) == "foobar"


def test_only_units_named_after_the_prefix_match(tmp_path: Path) -> None:
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("foobar.service", "foobar-quux.socket", "foobar@.service", "foobarbaz.service", "foobar.conf"):
        (units / unit).write_text("")
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/foobar-x.timer").write_text("")
    assert matching_units(tmp_path, "foobar") == [
        "/etc/systemd/system/foobar-x.timer",
        "/usr/lib/systemd/system/foobar-quux.socket",
        "/usr/lib/systemd/system/foobar.service",
        "/usr/lib/systemd/system/foobar@.service",
    ]
    assert matching_units(tmp_path, "other") == []


def test_portable_prefixes_go_into_the_os_release_a_link_leads_to(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="12"')
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    add_portable_prefixes(tmp_path, "foobar")
    assert (tmp_path / "usr/lib/os-release").read_text() == 'ID=debian\nVERSION_ID="12"\nPORTABLE_PREFIXES=foobar\n'
    assert (tmp_path / "etc/os-release").is_symlink()
    add_portable_prefixes(tmp_path, "foobar")
    assert (tmp_path / "usr/lib/os-release").read_text().count("PORTABLE_PREFIXES") == 1
