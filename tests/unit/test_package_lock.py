"""What a build installed, as records, and PackageLock=: exactly those packages again, or one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mkosi.errors import ConfigError, MkosiError
from mkosi.package_lock import Installed, PackageRecord, check_locked, load_lock, read_records, write_records

LESS = PackageRecord("less", "590-2.1~deb12u2", "amd64", "a" * 64)
LIBC = PackageRecord("libc6", "2.36-9+deb12u9", "amd64", "b" * 64)


def test_records_go_into_the_workspace_sorted_and_come_back(tmp_path: Path) -> None:
    write_records(tmp_path, [LIBC, LESS], ["deb http://deb.debian.org/debian bookworm main"])
    data = json.loads((tmp_path / "packages.json").read_text())
    assert [p["name"] for p in data["packages"]] == ["less", "libc6"]
    assert read_records(tmp_path) == Installed((LESS, LIBC), ("deb http://deb.debian.org/debian bookworm main",))
    # An installer that records nothing (Fedora, ...): nothing.
    assert read_records(tmp_path / "elsewhere") == Installed()
    assert LESS.request == "less=590-2.1~deb12u2"


def test_a_lock_is_a_manifests_package_list_or_refused_in_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps([LESS.as_json(), LIBC.as_json()]))
    assert load_lock(lock) == (LESS, LIBC)
    lock.write_text(json.dumps({"packages": [LESS.as_json()], "sources": []}))
    assert load_lock(lock) == (LESS,)
    bad = {
        "{": "cannot read a package list",
        "[]": "must be a non-empty JSON list of packages",
        json.dumps([{"name": "less"}]): "package 1 must have exactly the string fields",
        json.dumps([{**LESS.as_json(), "sha256": "XYZ"}]): "package less: sha256 must be 64 lowercase hex digits",
        json.dumps([LESS.as_json(), LESS.as_json()]): "packages listed twice: less",
    }
    for text, problem in bad.items():
        lock.write_text(text)
        with pytest.raises(ConfigError, match=problem) as refused:
            load_lock(lock)
        assert str(lock) in str(refused.value) and "\n" not in str(refused.value)


def test_a_locked_bootstrap_installs_the_locks_files_and_nothing_else(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock.json"
    check_locked([LESS, LIBC], [LIBC, LESS], lock_path)
    newer = PackageRecord("less", "643-1", "amd64", "c" * 64)
    changed = PackageRecord("less", LESS.version, "amd64", "d" * 64)
    extra = PackageRecord("ncurses-base", "6.4-4", "all", "e" * 64)
    cases = {
        (newer, LIBC): "less: 643-1/amd64 instead of 590-2.1~deb12u2/amd64",
        (changed, LIBC): f"less 590-2.1~deb12u2: the file's SHA-256 is {'d' * 64}, the lock's {'a' * 64}",
        (LESS, LIBC, extra): "ncurses-base is not in the lock",
        (LESS,): "libc6 2.36-9\\+deb12u9 would not be installed",
    }
    for resolved, problem in cases.items():
        with pytest.raises(MkosiError, match=f"PackageLock={lock_path}: the package set differs: .*{problem}"):
            check_locked(resolved, [LESS, LIBC], lock_path)
