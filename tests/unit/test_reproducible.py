"""SourceDateEpoch=: what makes the same inputs give the same bytes, on small trees with real tools."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest
import structlog

from mkosi.config import Compression
from mkosi.outputs.tar import tar_tree
from mkosi.run import build_environment, run
from mkosi.tree import clamp_mtimes, normalise_shadow_dates

EPOCH = 1_700_000_000
pytestmark = pytest.mark.anyio


def _tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "usr/lib").mkdir(parents=True)
    old = root / "usr/lib/old"
    old.write_text("from a package")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    (root / "etc/link").symlink_to("os-release")


def test_only_mtimes_later_than_the_epoch_are_clamped(tmp_path: Path) -> None:
    _tree(tmp_path / "root")
    clamped = clamp_mtimes(tmp_path / "root", EPOCH)
    stats = {p.relative_to(tmp_path).as_posix(): p.lstat().st_mtime for p in (tmp_path / "root").rglob("*")}
    # A package's file keeps its older time; everything made now gets the epoch, links themselves too.
    assert stats.pop("root/usr/lib/old") == 1_000_000_000
    assert set(stats.values()) == {EPOCH}
    assert (tmp_path / "root").stat().st_mtime == EPOCH
    assert clamped == 6


def test_password_change_days_become_the_epochs(tmp_path: Path) -> None:
    shadow = tmp_path / "etc/shadow"
    shadow.parent.mkdir()
    shadow.write_text("root:*:20424:0:99999:7:::\nnobody:*::0:99999:7:::\n")
    normalise_shadow_dates(tmp_path, "etc/shadow", EPOCH)
    assert shadow.read_text() == f"root:*:{EPOCH // 86400}:0:99999:7:::\nnobody:*::0:99999:7:::\n"


async def _tarball(tmp_path: Path, name: str, compression: Compression, epoch: int | None) -> bytes:
    root = tmp_path / name
    _tree(root)
    (root / "etc/os-release").touch()  # made "now": a second later for the second tarball
    await tar_tree(root, tmp_path / f"{name}.tar", compression, structlog.get_logger("test"), epoch)
    return (tmp_path / f"{name}.tar").read_bytes()


async def test_tarballs_of_equal_trees_made_at_different_times_are_identical(tmp_path: Path) -> None:
    for compression in Compression:
        first = await _tarball(tmp_path, f"a-{compression}", compression, EPOCH)
        time.sleep(1.1)
        second = await _tarball(tmp_path, f"b-{compression}", compression, EPOCH)
        assert first == second, compression
    # Without an epoch the times of the build are in the archive: the check above can fail.
    unpinned = await _tarball(tmp_path, "c", Compression.none, None)
    assert unpinned != await _tarball(tmp_path, "d", Compression.none, None)


async def test_every_subprocess_of_a_build_gets_its_environment(tmp_path: Path) -> None:
    async def in_a_build(epoch: str) -> str:
        build_environment.set((("SOURCE_DATE_EPOCH", epoch),))
        return (await run(["sh", "-c", "echo $SOURCE_DATE_EPOCH"], capture_stdout=True)).stdout.strip()

    results: dict[str, str] = {}

    async def record(epoch: str) -> None:
        results[epoch] = await in_a_build(epoch)

    # Two builds side by side in one process (a matrix) each see their own.
    async with anyio.create_task_group() as tg:
        tg.start_soon(record, "1")
        tg.start_soon(record, "2")
    assert results == {"1": "1", "2": "2"}
    assert (await run(["sh", "-c", "echo ${SOURCE_DATE_EPOCH-unset}"], capture_stdout=True)).stdout.strip() == "unset"


async def test_the_same_password_hashes_to_the_same_line_only_with_an_epoch(tmp_path: Path) -> None:
    from mkosi.config import parse_args
    from mkosi.context import Context
    from mkosi.tree import hash_password

    async def hashed(*argv: str) -> str:
        config = parse_args(["-C", str(tmp_path), *argv])[1]
        return await hash_password("hunter2", Context(config, tmp_path, structlog.get_logger("test")))

    pinned = await hashed(f"--source-date-epoch={EPOCH}")
    assert pinned == await hashed(f"--source-date-epoch={EPOCH}")
    assert pinned.startswith("$6$") and "hunter2" not in pinned
    # Another image (seed) gets another salt; without an epoch openssl draws one every time.
    assert pinned != await hashed(f"--source-date-epoch={EPOCH}", "--seed=0b6a3c2e-7a0f-4f7e-8c53-3c1e2b0e9d11")
    assert await hashed() != await hashed()


async def test_an_esp_of_the_same_files_is_the_same_bytes_with_an_epoch(tmp_path: Path) -> None:
    from mkosi.disk.filesystems import make_esp
    from mkosi.disk.partitions import MiB

    loader = tmp_path / "systemd-bootx64.efi"
    loader.write_bytes(b"MZ loader")
    uki = tmp_path / "uki.efi"
    uki.write_bytes(b"MZ kernel")
    files = {"EFI/BOOT/BOOTX64.EFI": loader, "EFI/Linux/image.efi": uki, "loader/loader.conf": loader}
    log = structlog.get_logger("test")
    images = []
    for name in ("a.img", "b.img", "c.img"):
        await make_esp(tmp_path / name, 20 * MiB, 0x1234ABCD, files, log, EPOCH if name != "c.img" else None)
        images.append((tmp_path / name).read_bytes())
        time.sleep(1.1 if name == "a.img" else 0)
    assert images[0] == images[1]
    assert images[2] != images[0]  # without one, mtools writes the time of day
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", str(tmp_path / "a.img"), "::"], capture_output=True, text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True,
    ).stdout.split()  # fmt: skip
    assert sorted(listing) == sorted(["::/EFI/", "::/loader/", "::/EFI/BOOT/", "::/EFI/Linux/",
        "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/Linux/image.efi", "::/loader/loader.conf"])  # fmt: skip
    assert not list(tmp_path.glob("*.tree"))


async def test_an_ext4_of_the_same_tree_is_the_same_bytes_with_an_epoch(tmp_path: Path) -> None:
    import uuid

    from mkosi.disk.filesystems import make_ext4, used_inodes
    from mkosi.disk.partitions import MiB

    root = tmp_path / "root"
    _tree(root)
    clamp_mtimes(root, EPOCH)
    fs_uuid = uuid.UUID("6f1c2a54-3f0e-4d2b-9a61-2b7c1e0d9f45")
    log = structlog.get_logger("test")
    build_environment.set((("E2FSPROGS_FAKE_TIME", str(EPOCH)),))

    async def ext4(name: str, epoch: int | None) -> bytes:
        await make_ext4(root, tmp_path / name, 16 * MiB, fs_uuid, "root", log, epoch)
        return (tmp_path / name).read_bytes()

    first = await ext4("a.img", EPOCH)
    time.sleep(1.1)
    # What a later build of the same tree does: its files are written (change time) and read again
    # (access time) at other times of day.
    (root / "etc/os-release").write_text("ID=test\n")
    os.utime(root / "etc/os-release", (EPOCH, EPOCH))
    (root / "usr/lib/old").read_text()
    assert await ext4("b.img", EPOCH) == first
    assert await ext4("c.img", None) != first  # mkfs.ext4 copies the tree's change times otherwise
    assert not list(tmp_path.glob("*.debugfs"))
    listing = subprocess.run(["dumpe2fs", str(tmp_path / "a.img")], capture_output=True, text=True, check=True)
    # The root directory, lost+found and the tree's six paths.
    assert len(used_inodes(listing.stdout)) == 2 + sum(1 for _ in root.rglob("*"))
    stat = subprocess.run(
        ["debugfs", "-R", "stat /usr/lib/old", str(tmp_path / "a.img")], capture_output=True, text=True, check=True
    ).stdout
    assert f"ctime: {EPOCH:#x}" in stat and f"atime: {EPOCH:#x}" in stat and "mtime: 0x3b9aca00" in stat


async def test_secure_boot_signatures_of_the_same_binary_are_the_same_bytes_with_an_epoch(tmp_path: Path) -> None:
    from mkosi.secure_boot import sign

    key, certificate = tmp_path / "sb.key", tmp_path / "sb.crt"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=test",
         "-keyout", str(key), "-out", str(certificate)], capture_output=True, check=True,
    )  # fmt: skip
    source = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    log = structlog.get_logger("test")
    signed = []
    for name, epoch in (("a.efi", EPOCH), ("b.efi", EPOCH), ("c.efi", None)):
        await sign(source, tmp_path / name, key, certificate, log, epoch)
        signed.append((tmp_path / name).read_bytes())
        time.sleep(1.1 if name == "a.efi" else 0)
    assert signed[0] == signed[1]
    assert signed[2] != signed[0]  # OpenSSL stamps the signature with the time of day otherwise
    verified = subprocess.run(["sbverify", "--cert", str(certificate), str(tmp_path / "a.efi")], capture_output=True)
    assert verified.returncode == 0, verified.stderr


def test_a_signature_is_never_older_than_its_key() -> None:
    from mkosi.checksums import signing_time

    colons = (
        "sec:u:255:22:AAAA:1600000000:::u:::scESC:::+:::23::0:\n"
        "fpr:::::::::0123:\n"
        "ssb:u:255:18:BBBB:1800000000::::::e:::+:::cv25519::\n"
    )
    assert signing_time(colons, EPOCH) == 1_800_000_000  # gpg refuses to sign with a key from the future
    assert signing_time(colons.replace("1800000000", "1650000000"), EPOCH) == EPOCH


async def test_release_signatures_of_the_same_sums_are_the_same_bytes_with_an_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mkosi.checksums import sign

    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    generated = subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "test <t@mkosi.invalid>", "ed25519", "sign", "never"],
        capture_output=True,
    )
    assert generated.returncode == 0, generated.stderr
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64} *image.raw\n")
    log = structlog.get_logger("test")
    signatures = []
    for name, epoch in (("a.gpg", EPOCH), ("b.gpg", EPOCH), ("c.gpg", None)):
        signatures.append((await sign(sums, None, log, tmp_path / name, epoch)).read_bytes())
        time.sleep(1.1 if name == "a.gpg" else 0)
    assert signatures[0] == signatures[1]
    assert signatures[2] != signatures[0]
    for name in ("a.gpg", "c.gpg"):
        checked = subprocess.run(["gpg", "--batch", "--verify", str(tmp_path / name), str(sums)], capture_output=True)
        assert checked.returncode == 0, checked.stderr
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], check=False)


def test_reproducible_refuses_what_a_rebuild_would_not_give_again(tmp_path: Path) -> None:
    from mkosi.config import parse_args
    from mkosi.errors import ConfigError
    from mkosi.reproducibility import obstacles

    def refusal(*argv: str) -> str:
        with pytest.raises(ConfigError) as refused:
            parse_args(["-C", str(tmp_path), "--reproducible", *argv])
        return str(refused.value)

    assert "no SourceDateEpoch=" in refusal()
    assert "Format=raw_btrfs: mkfs.btrfs" in refusal(f"--source-date-epoch={EPOCH}", "-t", "raw_btrfs")
    (tmp_path / "mkosi.passphrase").write_text("secret")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    assert "Encrypt=: LUKS2" in refusal(f"--source-date-epoch={EPOCH}", "-t", "raw_gpt", "--encrypt=all")
    (tmp_path / "mkosi.build").write_text("#!/bin/sh\n")
    (tmp_path / "mkosi.build").chmod(0o755)
    assert "mkosi.build: a script may write" in refusal(f"--source-date-epoch={EPOCH}")
    # Declared, the script is accepted; everything else here rebuilds to the same bytes.
    for fmt in ("tar", "directory", "raw_gpt", "raw_squashfs"):
        config = parse_args(["-C", str(tmp_path), "--reproducible", f"--source-date-epoch={EPOCH}", "-t", fmt,
                             "--deterministic-scripts"])[1]  # fmt: skip
        assert config.reproducible and obstacles(config) == []
    # Without Reproducible= the same configurations build, and their obstacles are only reported.
    config = parse_args(["-C", str(tmp_path), "-t", "raw_btrfs"])[1]
    assert [r.split(":")[0] for r in obstacles(config)] == ["no SourceDateEpoch=", "Format=raw_btrfs", "mkosi.build"]


def test_ssh_host_keys_go_and_sshd_makes_its_own_on_first_start(tmp_path: Path) -> None:
    from mkosi.tree import regenerate_ssh_host_keys

    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/ssh.service").write_text("[Service]\n")
    (root / "usr/lib/systemd/system/ssh@.service").write_text("[Service]\n")
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (root / "etc/ssh" / name).write_text("random\n")
    (root / "etc/ssh/sshd_config").write_text("Port 22\n")
    assert regenerate_ssh_host_keys(root) == ["ssh.service", "ssh@.service"]
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    drop_in = root / "etc/systemd/system/ssh.service.d/mkosi-host-keys.conf"
    assert "ExecStartPre=/usr/bin/ssh-keygen -A" in drop_in.read_text()
    # A tree without openssh-server gets nothing.
    assert regenerate_ssh_host_keys(tmp_path / "empty") == []
    assert not (tmp_path / "empty").exists()


async def test_an_xz_initrd_has_the_crc32_checks_the_kernels_decoder_knows(tmp_path: Path) -> None:
    from mkosi.outputs.compress import command

    (tmp_path / "data").write_bytes(b"initrd " * 10000)
    for kernel, check in ((True, "CRC32"), (False, "CRC64")):
        compressor = command(Compression.xz, for_kernel=kernel)
        assert compressor is not None
        with (tmp_path / "data").open("rb") as source, (tmp_path / "data.xz").open("wb") as target:
            subprocess.run(compressor, stdin=source, stdout=target, check=True)
        listed = subprocess.run(["xz", "--robot", "--list", str(tmp_path / "data.xz")], capture_output=True, text=True)
        assert f"\t{check}\t" in listed.stdout
    assert command(Compression.none, for_kernel=True) is None


def test_pigz_writes_the_same_bytes_on_one_core_as_on_all(tmp_path: Path) -> None:
    # Compress=gz in a reproducible build: pigz's output must not depend on the machine's cores.
    data = tmp_path / "data"
    data.write_bytes(b"".join(i.to_bytes(4, "little") * 97 for i in range(600_000)))
    outputs = [
        subprocess.run(["pigz", "-n", "-q", "-c", *cores, str(data)], capture_output=True, check=True).stdout
        for cores in ([], ["-p", "1"])
    ]
    assert outputs[0] == outputs[1] and len(outputs[0]) < data.stat().st_size
