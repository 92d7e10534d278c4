"""binfmt_misc handlers: qemu-user-static's definitions read, the host's own handlers recognised."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi import binfmt
from mkosi.architecture import Architecture
from mkosi.errors import MkosiError

# qemu-user-static 7.2 (bookworm), /usr/lib/binfmt.d/qemu-aarch64.conf.
QEMU_AARCH64 = (
    r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
    r":\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
    ":/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF\n"
)
# How the kernel shows that handler once registered.
REGISTERED = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POCF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


@pytest.fixture
def definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "binfmt.d"
    directory.mkdir()
    monkeypatch.setattr(binfmt, "DEFINITIONS", directory)
    return directory


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "binfmt_misc"
    directory.mkdir()
    (directory / "register").touch()
    (directory / "status").write_text("enabled\n")
    monkeypatch.setattr(binfmt, "BINFMT_DIR", directory)
    return directory


def test_qemu_user_statics_definition_is_registered_under_mkosis_name(definitions: Path) -> None:
    (definitions / "qemu-aarch64.conf").write_text(QEMU_AARCH64)
    handler = binfmt.definition(Architecture.arm64)
    assert handler.name == "mkosi-qemu-aarch64" and handler.interpreter.endswith("aarch64-binfmt-P")
    assert handler.registration() == QEMU_AARCH64.strip().replace(":qemu-aarch64:", ":mkosi-qemu-aarch64:")
    assert handler.magic_hex == "7f454c460201010000000000000000000200b700"


def test_the_fix_binary_flag_is_always_asked_for(definitions: Path) -> None:
    # Without F the kernel would look for the emulator inside the tree, which has none.
    (definitions / "qemu-aarch64.conf").write_text(QEMU_AARCH64.replace(":OPF", ":OP"))
    assert binfmt.definition(Architecture.arm64).flags == "OPF"


def test_a_missing_emulator_is_one_line_saying_what_to_install(
    definitions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    with pytest.raises(MkosiError) as missing:
        binfmt.definition(Architecture.arm64)
    assert str(missing.value) == (
        "Architecture=arm64 on this x86_64 host runs the tree's programs through qemu's user-mode emulator, "
        f"which is not installed ({definitions}/qemu-aarch64.conf is missing): apt install qemu-user-static"
    )


def test_a_malformed_definition_is_refused() -> None:
    with pytest.raises(ValueError, match="not a binfmt_misc registration"):
        binfmt.Handler.parse("qemu-aarch64 M 0 magic")


def test_the_hosts_handler_is_used_only_when_it_runs_binaries_in_any_tree(definitions: Path, handlers: Path) -> None:
    (definitions / "qemu-aarch64.conf").write_text(QEMU_AARCH64)
    wanted = binfmt.definition(Architecture.arm64)
    assert binfmt.usable_host_handler(wanted) is None
    (handlers / "qemu-aarch64").write_text(REGISTERED.replace("POCF", "POC"))
    assert binfmt.usable_host_handler(wanted) is None  # no fix-binary: the emulator must be in the tree
    (handlers / "qemu-aarch64").write_text(REGISTERED.replace("enabled", "disabled"))
    assert binfmt.usable_host_handler(wanted) is None
    (handlers / "qemu-arm").write_text(REGISTERED.replace("b700", "2800"))
    assert binfmt.usable_host_handler(wanted) is None  # another machine's binaries
    (handlers / "qemu-aarch64").write_text(REGISTERED)
    assert binfmt.usable_host_handler(wanted) == "qemu-aarch64"
    # mkosi's own, left by a killed build, is not the host's.
    (handlers / "qemu-aarch64").unlink()
    (handlers / "mkosi-qemu-aarch64").write_text(REGISTERED)
    assert binfmt.usable_host_handler(wanted) is None
