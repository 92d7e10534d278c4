"""Protected raw images: dm-verity, Secure Boot and LUKS, checked with veritysetup, sbverify and
cryptsetup, and booted in qemu (TCG): a verity root behind enforced Secure Boot, a corrupted verity
root that must not boot, a LUKS root unlocked with a key file in an extra initrd.

Boots are slow on two shared cores: each image is built once and booted at most twice.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.integration.support import ModuleDir, boot, mkosi
from tests.integration.test_disk import ESP_TYPE, ROOT_TYPE, _by_type, _extract

VERITY_TYPE = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
VERITY_SIG_TYPE = "41092b05-9fc8-4523-994f-2def0408b176"
MARKER = "MKOSI-PROTECTED-OK"
BOOT_TIMEOUT = 300
REPORT = (
    f"{MARKER} source=$(findmnt -no SOURCE /) fstype=$(findmnt -no FSTYPE /) "
    'fstab=$(grep -cv "^#" /etc/fstab) srv=$(findmnt -no SOURCE /srv)'
)
MARKER_UNIT = f"""\
[Unit]
Description=Tell the test harness that the image booted, and from what
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{REPORT}" > /dev/kmsg'

[Install]
WantedBy=multi-user.target
"""
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    key, certificate = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return key, certificate


@pytest.fixture(scope="module")
def project(module_dir: ModuleDir) -> Path:
    project = module_dir("protected-project")
    units = project / "mkosi.extra/etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "mkosi-marker.service").write_text(MARKER_UNIT)
    (units / "multi-user.target.wants/mkosi-marker.service").symlink_to("../mkosi-marker.service")
    (project / "mkosi.extra/etc/mkosi-test-marker").write_text("on the root\n")
    (project / "mkosi.extra/srv/data").mkdir(parents=True)
    (project / "mkosi.extra/srv/data/file").write_text("on srv\n")
    _certificate(project, "mkosi.secure-boot")
    return project


@pytest.fixture(scope="module")
def verity_image(project: Path) -> Path:
    # Signed by default with the Secure Boot key: the boots below prove a signature partition harms nothing.
    mkosi("-d", "debian", "-r", "bookworm", "-t", "raw_squashfs", "--bootable", "--verity=signed", "--secure-boot",
          "-o", "verity.raw", "-f", "build", cwd=project)  # fmt: skip
    return project / "verity.raw"


def _esp_file(image: Path, pattern: str, destination: Path) -> Path:
    esp = _extract(image, _by_type(image)[ESP_TYPE], destination.with_suffix(".esp"))
    listing = subprocess.run(
        ["mdir", "-i", str(esp), "-/", "-b", "::"], capture_output=True, text=True, check=True, env=ENV
    ).stdout.split()
    found = [p for p in listing if p.startswith(pattern) and not p.endswith("/")]
    assert len(found) == 1, listing
    subprocess.run(["mcopy", "-i", str(esp), found[0], str(destination)], check=True, env=ENV)
    return destination


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_verity_partitions_are_named_by_the_root_hash(verity_image: Path) -> None:
    root_hash = (verity_image.parent / "verity.roothash").read_text().strip()
    assert len(root_hash) == 64
    parts = _by_type(verity_image)
    assert set(parts) == {ESP_TYPE, ROOT_TYPE, VERITY_TYPE, VERITY_SIG_TYPE}
    assert parts[VERITY_SIG_TYPE]["name"] == "root-x86-64-verity-sig"
    assert uuid.UUID(str(parts[ROOT_TYPE]["uuid"])) == uuid.UUID(root_hash[:32])
    assert uuid.UUID(str(parts[VERITY_TYPE]["uuid"])) == uuid.UUID(root_hash[32:])
    assert "GUID:60" in str(parts[ROOT_TYPE].get("attrs", ""))


def test_veritysetup_verifies_and_notices_one_flipped_byte(verity_image: Path, tmp_path: Path) -> None:
    root_hash = (verity_image.parent / "verity.roothash").read_text().strip()
    parts = _by_type(verity_image)
    data = _extract(verity_image, parts[ROOT_TYPE], tmp_path / "root.img")
    hashes = _extract(verity_image, parts[VERITY_TYPE], tmp_path / "verity.img")
    verify = ["veritysetup", "verify", str(data), str(hashes), root_hash]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    _flip(data, data.stat().st_size // 2)
    assert subprocess.run(verify, capture_output=True).returncode != 0


def _signature(image: Path, tmp_path: Path) -> dict[str, str]:
    content = _extract(image, _by_type(image)[VERITY_SIG_TYPE], tmp_path / "signature.img").read_bytes()
    document = content.rstrip(b"\0")
    # A JSON object padded with NUL bytes, as the Discoverable Partitions Specification says.
    assert len(document) < len(content) and set(content[len(document) :]) == {0}
    found: dict[str, str] = json.loads(document)
    return found


def _smime_verify(signature: Path, content: Path, certificate: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(signature), "-content", str(content),
         "-certfile", str(certificate), "-nointern", "-CAfile", str(certificate), "-out", "/dev/null"],
        capture_output=True,
    )  # fmt: skip


def test_root_hash_signature_verifies_against_the_certificate_only(verity_image: Path, tmp_path: Path) -> None:
    root_hash = (verity_image.parent / "verity.roothash").read_text().strip()
    document = _signature(verity_image, tmp_path)
    assert set(document) == {"rootHash", "certificateFingerprint", "signature"}
    assert document["rootHash"] == root_hash
    certificate = verity_image.parent / "mkosi.secure-boot.crt"
    fingerprint = subprocess.run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("=", 1)[1]  # fmt: skip
    assert document["certificateFingerprint"] == fingerprint.replace(":", "").lower()
    signature, signed = tmp_path / "roothash.p7s", tmp_path / "roothash.txt"
    signature.write_bytes(base64.b64decode(document["signature"]))
    # What the kernel checks: the root hash as hex text, nothing else.
    signed.write_text(root_hash)
    assert _smime_verify(signature, signed, certificate).returncode == 0, _smime_verify(signature, signed, certificate)
    _, other = _certificate(tmp_path, "other")
    assert _smime_verify(signature, signed, other).returncode != 0
    tampered = tmp_path / "tampered.txt"
    tampered.write_text(root_hash[::-1])
    assert _smime_verify(signature, tampered, certificate).returncode != 0


@pytest.mark.parametrize(("fmt", "fstype"), [("raw_gpt", "ext4"), ("raw_btrfs", "btrfs")])
def test_read_only_ext4_and_btrfs_roots_take_verity_too(project: Path, tmp_path: Path, fmt: str, fstype: str) -> None:
    mkosi("-d", "debian", "-r", "bookworm", "-t", fmt, "--verity", "-o", f"{fmt}-verity.raw", "-f", "build",
          cwd=project)  # fmt: skip
    image = project / f"{fmt}-verity.raw"
    root_hash = (project / f"{fmt}-verity.roothash").read_text().strip()
    parts = _by_type(image)
    assert set(parts) == {ROOT_TYPE, VERITY_TYPE}
    assert "GUID:60" in str(parts[ROOT_TYPE].get("attrs", ""))  # verity implies a read-only root
    data = _extract(image, parts[ROOT_TYPE], tmp_path / "root.img")
    hashes = _extract(image, parts[VERITY_TYPE], tmp_path / "verity.img")
    blkid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(data)], capture_output=True, text=True)
    assert blkid.stdout.strip() == fstype
    verify = ["veritysetup", "verify", str(data), str(hashes), root_hash]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    _flip(data, data.stat().st_size // 3)
    assert subprocess.run(verify, capture_output=True).returncode != 0


def test_uki_carries_the_root_hash_and_both_efi_binaries_are_signed(verity_image: Path, tmp_path: Path) -> None:
    root_hash = (verity_image.parent / "verity.roothash").read_text().strip()
    uki = _esp_file(verity_image, "::/EFI/Linux/", tmp_path / "uki.efi")
    cmdline = tmp_path / "cmdline"
    # objcopy rewrites its input when given no output file, which would drop the signature.
    scratch = tmp_path / "scratch.efi"
    subprocess.run(["objcopy", "--dump-section", f".cmdline={cmdline}", str(uki), str(scratch)], check=True)
    assert f"roothash={root_hash}" in cmdline.read_text().split()
    loader = _esp_file(verity_image, "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "bootx64.efi")
    _, other = _certificate(tmp_path, "other")
    certificate = verity_image.parent / "mkosi.secure-boot.crt"
    for binary in (uki, loader):
        assert (
            subprocess.run(["sbverify", "--cert", str(certificate), str(binary)], capture_output=True).returncode == 0
        )
        assert subprocess.run(["sbverify", "--cert", str(other), str(binary)], capture_output=True).returncode != 0


def test_verity_image_boots_with_secure_boot_enforced(verity_image: Path) -> None:
    options = ("-t", "raw_squashfs", "--bootable", "--verity", "--secure-boot", "-o", verity_image.name)
    console = boot(verity_image.parent, *options, until=[MARKER], timeout=BOOT_TIMEOUT)
    line = next((line for line in console.splitlines() if MARKER in line), None)
    assert line is not None, console[-3000:]
    # Also the suite's one boot of a squashfs root found without root= or fstab (test_disk boots ext4).
    assert "source=/dev/mapper/root fstype=squashfs fstab=0" in line
    assert "Secure Boot" not in console or "enabled" in console.lower()


def test_corrupted_verity_root_does_not_boot(verity_image: Path) -> None:
    corrupted = verity_image.with_name("corrupted.raw")
    shutil.copyfile(verity_image, corrupted)
    root = _by_type(corrupted)[ROOT_TYPE]
    # The squashfs superblock: the first block the kernel reads when it mounts the root.
    _flip(corrupted, int(str(root["start"])) * 512 + 8)
    options = ("-t", "raw_squashfs", "--bootable", "--verity", "-o", corrupted.name)
    failure = ["data block 0 is corrupted", "Failed to mount", "emergency"]
    console = boot(verity_image.parent, *options, until=[MARKER, *failure], timeout=BOOT_TIMEOUT)
    assert MARKER not in console
    assert "corrupted" in console, console[-3000:]


PASSPHRASE = "correct horse battery staple 7f3a"
LUKS_SEED = "3d0c55a4-9a8e-4e0b-8a43-4b7f0f6c2d19"
LUKS_OPTIONS = (
    "-d", "debian", "-r", "bookworm", "-t", "raw_gpt", "--bootable", "--encrypt=all",
    "--home-size=64M", "--srv-size=64M", "--swap-size=64M",
    "--key-derivation=pbkdf2", "--key-derivation-time=10", f"--seed={LUKS_SEED}",
)  # fmt: skip


@pytest.fixture(scope="module")
def luks_project(project: Path) -> Path:
    (project / "mkosi.passphrase").write_text(PASSPHRASE + "\n")
    (project / "mkosi.passphrase").chmod(0o600)
    return project


@pytest.fixture(scope="module")
def luks_image(luks_project: Path) -> Path:
    # -i: the unattended variant below reuses the bootstrap.
    mkosi(*LUKS_OPTIONS, "-i", "-o", "luks.raw", "-f", "build", cwd=luks_project)
    return luks_project / "luks.raw"


@pytest.fixture(scope="module")
def unattended_luks_image(luks_project: Path, luks_image: Path, module_dir: ModuleDir) -> Path:
    """The same image with the root's key in an extra initrd, where systemd-cryptsetup looks for it."""
    keys = module_dir("keys")
    (keys / "etc/cryptsetup-keys.d").mkdir(parents=True)
    (keys / "etc/cryptsetup-keys.d/root.key").write_text(PASSPHRASE)
    cpio = subprocess.run(
        "find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0", shell=True, cwd=keys, capture_output=True, check=True
    ).stdout
    (luks_project / "keys.cpio").write_bytes(cpio)
    mkosi(*LUKS_OPTIONS, "-i", "--initrd=keys.cpio", "-o", "luks-unattended.raw", "-f", "build", cwd=luks_project)
    return luks_project / "luks-unattended.raw"


def _luks_dump(image: Path, partition: dict[str, object]) -> str:
    start, size = int(str(partition["start"])) * 512, int(str(partition["size"])) * 512
    probe = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", "-O", str(start), str(image)], capture_output=True, text=True
    )
    if probe.stdout.strip() != "crypto_LUKS":
        return ""
    header = image.with_name(f".{image.name}.{start}.hdr")
    subprocess.run(
        ["dd", f"if={image}", f"of={header}", "bs=1M", f"skip={start >> 20}", "count=32", "status=none"], check=True
    )
    try:
        assert size > 32 << 20
        dump = subprocess.run(["cryptsetup", "luksDump", str(header)], capture_output=True, text=True, check=True)
        return dump.stdout
    finally:
        header.unlink()


def test_luks2_on_exactly_root_home_and_srv(luks_image: Path) -> None:
    names = {str(p["name"]): p for p in _by_type(luks_image).values()}
    assert set(names) == {"esp", "root-x86-64", "swap", "home", "srv"}
    dumps = {name: _luks_dump(luks_image, p) for name, p in names.items()}
    assert {name for name, dump in dumps.items() if dump} == {"root-x86-64", "home", "srv"}
    for name in ("root-x86-64", "home", "srv"):
        assert "Version:       \t2" in dumps[name] and "pbkdf2" in dumps[name], dumps[name]


def _partition_file(image: Path, label: str, destination: Path) -> Path:
    partition = next(p for p in _by_type(image).values() if p["name"] == label)
    return _extract(image, partition, destination)


def test_passphrase_is_accepted_and_another_rejected(luks_image: Path, tmp_path: Path) -> None:
    root = _partition_file(luks_image, "root-x86-64", tmp_path / "root.img")
    test = ["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(root)]
    assert subprocess.run(test, input=PASSPHRASE.encode(), capture_output=True).returncode == 0
    assert subprocess.run(test, input=b"not the passphrase", capture_output=True).returncode != 0


def test_decrypted_copy_holds_the_tree(luks_image: Path, tmp_path: Path) -> None:
    srv = _partition_file(luks_image, "srv", tmp_path / "srv.img")
    key = PASSPHRASE.encode()
    # cryptsetup 2.6 decrypts offline only with a detached header whose data starts at offset 0:
    # give the volume key a new such header over the data area alone, then decrypt that.
    volume_key = tmp_path / "volume.key"
    subprocess.run(
        ["cryptsetup", "luksDump", "--dump-volume-key", f"--volume-key-file={volume_key}", "--batch-mode",
         "--key-file=-", str(srv)],
        input=key, check=True, capture_output=True,
    )  # fmt: skip
    dump = subprocess.run(["cryptsetup", "luksDump", str(srv)], capture_output=True, text=True, check=True).stdout
    offset = int(dump.split("Data segments:", 1)[1].split("offset:", 1)[1].split()[0])
    data, header = tmp_path / "srv.data", tmp_path / "srv.hdr"
    subprocess.run(["dd", f"if={srv}", f"of={data}", "bs=1M", f"skip={offset >> 20}", "status=none"], check=True)
    subprocess.run(
        ["cryptsetup", "luksFormat", "--type=luks2", f"--header={header}", f"--volume-key-file={volume_key}",
         "--key-size=512", "--cipher=aes-xts-plain64", "--sector-size=512", "--pbkdf=pbkdf2", "--iter-time=1",
         "--batch-mode", "--key-file=-", str(data)],
        input=key, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["cryptsetup", "reencrypt", "--decrypt", "--batch-mode", "--force-offline-reencrypt", "--key-file=-",
         f"--header={header}", str(data)],
        input=key, check=True, capture_output=True,
    )  # fmt: skip
    assert subprocess.run(["e2fsck", "-fn", str(data)], capture_output=True).returncode == 0
    assert _debugfs(data, "/data/file") == "on srv\n"


def _debugfs(filesystem: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(filesystem)], capture_output=True, text=True, check=True
    ).stdout


def _contains(path: Path, needle: bytes) -> bool:
    previous = b""
    with path.open("rb") as f:
        while chunk := f.read(16 << 20):
            if needle in previous[-len(needle) :] + chunk:
                return True
            previous = chunk
    return False


def test_passphrase_is_nowhere_in_log_or_image(luks_image: Path) -> None:
    log = luks_image.with_name(luks_image.name + ".log")
    assert log.exists()
    assert not _contains(log, PASSPHRASE.encode())
    assert not _contains(luks_image, PASSPHRASE.encode())


def test_unsigned_image_is_refused_by_secure_boot(luks_image: Path) -> None:
    options = ("-t", "raw_gpt", "--bootable", "--secure-boot", "-o", luks_image.name)
    console = boot(luks_image.parent, *options, until=["Access Denied", MARKER], timeout=180)
    assert "Access Denied" in console, console[-3000:]
    assert MARKER not in console


def test_luks_image_boots_unattended(unattended_luks_image: Path) -> None:
    # The root's key comes from the extra initrd; /srv and /home are asked for on the console.
    options = ("-t", "raw_gpt", "--bootable", "-o", unattended_luks_image.name)
    answers = {"passphrase for disk": PASSPHRASE.encode() + b"\n"}
    console = boot(unattended_luks_image.parent, *options, until=[MARKER], timeout=BOOT_TIMEOUT, answers=answers)
    line = next((line for line in console.splitlines() if MARKER in line), None)
    assert line is not None, console[-3000:]
    assert "source=/dev/mapper/root" in line and "srv=/dev/mapper/srv" in line
