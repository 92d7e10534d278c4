"""Release files of a single build: SHA256SUMS, its gpg signature and the .nspawn file, checked with
sha256sum, gpgv and pgrep (no gpg-agent may be left behind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import ModuleDir, mkosi

NSPAWN = "[Exec]\nBoot=yes\n\n[Network]\nPrivate=yes\n"


def _gpg(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["gpg", "--batch", *args], env={**os.environ, "GNUPGHOME": str(home)}, capture_output=True)


def _agents(home: Path) -> str:
    return subprocess.run(["pgrep", "-af", f"gpg-agent.*{home}"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def gnupg_home(module_dir: ModuleDir) -> Path:
    home = module_dir("gnupg")
    home.chmod(0o700)
    key = ("mkosi test <test@example.org>", "ed25519", "sign", "never")
    assert _gpg(home, "--passphrase", "", "--quick-gen-key", *key).returncode == 0
    (home / "public.gpg").write_bytes(_gpg(home, "--export").stdout)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)}, check=True)
    return home


@pytest.fixture(scope="module")
def signed_release(module_dir: ModuleDir, gnupg_home: Path) -> Path:
    project = module_dir("release-project")
    (project / "mkosi.nspawn").write_text(NSPAWN)
    # The default key of an isolated GNUPGHOME: no --key.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GNUPGHOME", str(gnupg_home))
        mkosi("-d", "debian", "-t", "tar", "--compress=zstd", "--sign", "-o", "image.tar.zst", cwd=project)
    return project


def test_outputs_and_checksum_lines(signed_release: Path) -> None:
    names = sorted(p.name for p in signed_release.iterdir() if not p.name.startswith("mkosi."))
    assert names == ["SHA256SUMS", "SHA256SUMS.gpg", "image.nspawn", "image.tar.zst", "image.tar.zst.log"]
    assert (signed_release / "image.nspawn").read_text() == NSPAWN
    lines = (signed_release / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split(" *", 1)[1] for line in lines) == ["image.nspawn", "image.tar.zst"]
    assert lines == sorted(lines, key=str.encode)
    head = (signed_release / "image.tar.zst").read_bytes()[:4]
    assert head == b"\x28\xb5\x2f\xfd"  # the checksum covers the compressed file


def test_sha256sum_passes_and_fails_after_one_byte_changes(signed_release: Path, tmp_path: Path) -> None:
    check = ["sha256sum", "--strict", "-c", "SHA256SUMS"]
    assert subprocess.run(check, cwd=signed_release, capture_output=True).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(signed_release, copy)
    with (copy / "image.tar.zst").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert subprocess.run(check, cwd=copy, capture_output=True).returncode != 0


def test_gpgv_verifies_and_rejects_a_modified_sums_file(signed_release: Path, gnupg_home: Path, tmp_path: Path) -> None:
    signature = (signed_release / "SHA256SUMS.gpg").read_bytes()
    assert not signature.startswith(b"-----BEGIN")  # binary, as systemd's importer wants it
    keyring = str(gnupg_home / "public.gpg")
    gpgv = ["gpgv", "--keyring", keyring, "SHA256SUMS.gpg", "SHA256SUMS"]
    assert subprocess.run(gpgv, cwd=signed_release, capture_output=True).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(signed_release, copy)
    sums = copy / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("image.nspawn", "image.nspawm"))
    assert subprocess.run(gpgv, cwd=copy, capture_output=True).returncode != 0


def test_no_gpg_agent_is_left_behind(signed_release: Path, gnupg_home: Path) -> None:
    assert _agents(gnupg_home) == ""


def test_the_seed_example_produces_every_release_file(tmp_path: Path) -> None:
    """`mkosi -d debian -t raw_squashfs --verity --checksum --xz --package=openssh-client`, as announced."""
    example = ("-d", "debian", "-t", "raw_squashfs", "--verity", "--checksum", "--xz", "--package=openssh-client")
    mkosi(*example, cwd=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["SHA256SUMS", "image.raw.xz", "image.raw.xz.log", "image.roothash"]
    sums = (tmp_path / "SHA256SUMS").read_text()
    covered = sorted(line.split(" *", 1)[1] for line in sums.splitlines())
    assert covered == ["image.raw.xz", "image.roothash"]
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0

    raw = tmp_path / "image.raw"
    with raw.open("wb") as f:
        subprocess.run(["xz", "-dc", str(tmp_path / "image.raw.xz")], stdout=f, check=True)
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, text=True, check=True).stdout)
    parts = {p["name"]: p for p in table["partitiontable"]["partitions"]}
    assert set(parts) == {"root-x86-64", "root-x86-64-verity"}
    for name in parts:
        start, size = int(parts[name]["start"]), int(parts[name]["size"])
        subprocess.run(
            ["dd", f"if={raw}", f"of={tmp_path / name}", "bs=512", f"skip={start}", f"count={size}", "status=none"],
            check=True,
        )
    root_hash = (tmp_path / "image.roothash").read_text().strip()
    verify = ["veritysetup", "verify", str(tmp_path / "root-x86-64"), str(tmp_path / "root-x86-64-verity"), root_hash]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    listing = subprocess.run(
        ["unsquashfs", "-l", str(tmp_path / "root-x86-64")], capture_output=True, text=True, check=True
    ).stdout
    assert "squashfs-root/usr/bin/ssh\n" in listing
