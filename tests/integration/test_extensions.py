"""System and configuration extensions and portable services, built on the session's Debian images
(conftest's directory_image and tar_image) and checked with sfdisk, systemd-dissect, unsquashfs and
veritysetup; one bootable image whose systemd merges the sysext at boot and starts the unit only
the extension has.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import ModuleDir, boot, mkosi
from tests.integration.test_protected import VERITY_SIG_TYPE, _certificate, _signature, _smime_verify

ROOT_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_VERITY_TYPE = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
MARKER = "MKOSI-SYSEXT-OK"
BOOT_TIMEOUT = 240  # TCG on two shared cores

# In the sysext only: the boot test proves systemd merged it by starting this unit.
EXTENSION_UNIT = f"""\
[Unit]
Description=Tell the test harness that systemd merged the extension

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{MARKER} $(tr "\\\\n" " " < /usr/lib/extension-release.d/extension-release.mkosi-ext)\
tree=$(command -v tree)" > /dev/kmsg'
"""
# In the bootable image: the unit above is nowhere when the manager starts; after systemd-sysext
# merged /usr, starting it by name finds it there.
STARTER_UNIT = """\
[Unit]
Description=Start the unit the system extension brings
After=systemd-sysext.service

[Service]
Type=oneshot
ExecStart=/bin/systemctl start mkosi-ext-marker.service

[Install]
WantedBy=multi-user.target
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _table(image: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout
    partitions: list[dict[str, object]] = json.loads(out)["partitiontable"]["partitions"]
    return partitions


def _partitions(image: Path, directory: Path, signed: bool = False) -> tuple[Path, Path]:
    """The data and hash partitions cut out of the image, after checking their types."""
    table = _table(image)
    expected = [ROOT_TYPE, ROOT_VERITY_TYPE, *([VERITY_SIG_TYPE] if signed else [])]
    assert [str(p["type"]).lower() for p in table] == expected
    files = []
    for partition, name in zip(table[:2], ("data.img", "hash.img"), strict=True):
        start, size = int(str(partition["start"])), int(str(partition["size"]))
        out = directory / name
        command = ["dd", f"if={image}", f"of={out}", "bs=512", f"skip={start}", f"count={size}", "status=none"]
        subprocess.run(command, check=True)
        files.append(out)
    return files[0], files[1]


def _file_system(data: Path) -> str:
    probed = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(data)], capture_output=True, text=True)
    return probed.stdout.strip()


def _extracted(data: Path) -> Path:
    """An erofs image's files, as fsck.erofs (which checks every one on the way) extracts them."""
    directory = data.with_suffix(".files")
    if not directory.exists():
        subprocess.run(["fsck.erofs", f"--extract={directory}", str(data)], capture_output=True, check=True)
    return directory


def _listing(data: Path) -> list[str]:
    if _file_system(data) == "erofs":
        root = _extracted(data)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    out = subprocess.run(["unsquashfs", "-l", "-d", "", str(data)], capture_output=True, text=True, check=True)
    return sorted(line.lstrip("/") for line in out.stdout.splitlines() if line.strip("/"))


def _cat(data: Path, path: str) -> str:
    if _file_system(data) == "erofs":
        return (_extracted(data) / path).read_text()
    return subprocess.run(["unsquashfs", "-cat", str(data), path], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def sysext(directory_image: Path, module_dir: ModuleDir) -> Path:
    """A sysext on the session's directory image, configured in mkosi.default as a user would."""
    project = module_dir("sysext-project")
    (project / "mkosi.default").write_text(
        "[Distribution]\nDistribution=debian\nRelease=bookworm\n\n"
        f"[Output]\nFormat=sysext\nBaseImage={directory_image}\nOutput=mkosi-ext.raw\n\n"
        "[Packages]\nPackages=tree\n\n[Validation]\nCheckSum=yes\n"
    )
    extra = project / "mkosi.extra"
    _write(extra / "usr/lib/systemd/system/mkosi-ext-marker.service", EXTENSION_UNIT)
    _write(extra / "opt/mkosi-ext/hello", "hello from /opt\n")
    _write(extra / "etc/mkosi-ext-not-in-a-sysext", "a sysext holds no /etc\n")
    mkosi("build", cwd=project)
    return project / "mkosi-ext.raw"


def test_sysext_is_a_ddi_of_exactly_what_the_build_added(sysext: Path, tmp_path: Path) -> None:
    data, _ = _partitions(sysext, tmp_path)
    assert _listing(data) == [
        "opt",
        "opt/mkosi-ext",
        "opt/mkosi-ext/hello",
        "usr",
        "usr/bin",
        "usr/bin/tree",
        "usr/lib",
        "usr/lib/extension-release.d",
        "usr/lib/extension-release.d/extension-release.mkosi-ext",
        "usr/lib/systemd",
        "usr/lib/systemd/system",
        "usr/lib/systemd/system/mkosi-ext-marker.service",
    ]
    release = _cat(data, "usr/lib/extension-release.d/extension-release.mkosi-ext")
    assert release == "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n"
    dissected = subprocess.run(["systemd-dissect", str(sysext)], capture_output=True, text=True, check=True).stdout
    assert "✓ extension for system" in dissected and "VERSION_ID=12" in dissected
    # systemd finds extension-release.NAME by the image's name: under another name it is no extension.
    renamed = shutil.copy(sysext, tmp_path / "renamed.raw")
    other = subprocess.run(["systemd-dissect", str(renamed)], capture_output=True, text=True, check=True).stdout
    assert "✗ extension for system" in other
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=sysext.parent, capture_output=True, text=True)
    assert sums.returncode == 0 and "mkosi-ext.raw: OK" in sums.stdout and "mkosi-ext.roothash: OK" in sums.stdout


def test_sysext_verity_verifies_and_refuses_a_flipped_byte(sysext: Path, tmp_path: Path) -> None:
    data, hashes = _partitions(sysext, tmp_path)
    root_hash = sysext.with_name("mkosi-ext.roothash").read_text().strip()
    table = _table(sysext)
    # The partitions are named by the root hash: systemd finds both from it.
    assert str(table[0]["uuid"]).lower().replace("-", "") == root_hash[:32]
    assert str(table[1]["uuid"]).lower().replace("-", "") == root_hash[32:]
    assert subprocess.run(["veritysetup", "verify", str(data), str(hashes), root_hash]).returncode == 0
    with data.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert subprocess.run(["veritysetup", "verify", str(data), str(hashes), root_hash]).returncode != 0


def test_confext_on_a_compressed_tarball_holds_only_etc_in_erofs(tar_image: Path, tmp_path: Path) -> None:
    extra = tmp_path / "conf"
    _write(extra / "etc/mkosi-conf/app.conf", "answer=42\n")
    _write(extra / "usr/share/mkosi-conf/not-in-a-confext", "a confext holds only /etc\n")
    base = f"--base-image={tar_image}"
    options = ("--ddi-file-system=erofs", "--compress=zstd", "-o", "conf.raw")
    mkosi("-t", "confext", base, f"--extra-tree={extra}", *options, "build", cwd=tmp_path)
    compressed = tmp_path / "conf.raw.zst"
    image = tmp_path / "conf.raw"
    subprocess.run(["zstd", "-dq", str(compressed), "-o", str(image)], check=True)
    data, hashes = _partitions(image, tmp_path)
    assert _file_system(data) == "erofs"
    assert _listing(data) == [
        "etc",
        "etc/extension-release.d",
        "etc/extension-release.d/extension-release.conf",
        "etc/mkosi-conf",
        "etc/mkosi-conf/app.conf",
    ]
    assert _cat(data, "etc/extension-release.d/extension-release.conf") == (
        "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n"
    )
    root_hash = (tmp_path / "conf.roothash").read_text().strip()
    assert subprocess.run(["veritysetup", "verify", str(data), str(hashes), root_hash]).returncode == 0


def test_portable_service_has_its_os_release_prefixed_units_and_signed_verity(
    directory_image: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "svc"
    _write(extra / "usr/lib/systemd/system/mkosi-svc.service", "[Service]\nExecStart=/usr/bin/less --version\n")
    base = f"--base-image={directory_image}"
    # Signed with the project's Secure Boot key, as Verity=signed does by default.
    _, certificate = _certificate(tmp_path, "mkosi.secure-boot")
    mkosi("-t", "portable", base, f"--extra-tree={extra}", "--verity=signed", "-o", "mkosi-svc_1.0.raw", "build",
          cwd=tmp_path)  # fmt: skip
    image = tmp_path / "mkosi-svc_1.0.raw"
    dissected = subprocess.run(["systemd-dissect", str(image)], capture_output=True, text=True, check=True).stdout
    assert "✓ portable service" in dissected and "PORTABLE_PREFIXES=mkosi-svc" in dissected
    data, hashes = _partitions(image, tmp_path, signed=True)
    document = _signature(image, tmp_path)
    (tmp_path / "roothash.p7s").write_bytes(base64.b64decode(document["signature"]))
    (tmp_path / "roothash.txt").write_text(document["rootHash"])
    verified = _smime_verify(tmp_path / "roothash.p7s", tmp_path / "roothash.txt", certificate)
    assert verified.returncode == 0, verified.stderr
    listing = _listing(data)
    assert "usr/lib/systemd/system/mkosi-svc.service" in listing and "usr/bin/less" in listing
    assert _cat(data, "etc/resolv.conf") == "" and _cat(data, "etc/machine-id") == ""
    root_hash = (tmp_path / "mkosi-svc_1.0.roothash").read_text().strip()
    assert document["rootHash"] == root_hash
    assert subprocess.run(["veritysetup", "verify", str(data), str(hashes), root_hash]).returncode == 0


def test_a_sysext_without_a_base_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = mkosi("-t", "sysext", "build", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mkosi: -t: sysext needs BaseImage= (--base-image): an extension holds what the build adds to its base"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_removed_base_file_is_refused_and_nothing_is_published(directory_image: Path, tmp_path: Path) -> None:
    script = tmp_path / "mkosi.postinst"
    script.write_text("#!/bin/sh\nrm /usr/bin/less\n")
    script.chmod(0o755)
    base = f"--base-image={directory_image}"
    result = mkosi("-t", "sysext", base, "-o", "rm.raw", "build", cwd=tmp_path, check=False)
    assert result.returncode == 1
    expected = (
        "mkosi: the build removed /usr/bin/less from BaseImage=: an extension can only add or change files, "
        "systemd overlays it on the base"
    )
    assert expected in result.stderr.splitlines()
    # Only the log of the failed build stays, saying why.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mkosi.postinst", "rm.raw.log"]


def test_a_portable_image_without_its_units_is_refused(directory_image: Path, tmp_path: Path) -> None:
    base = f"--base-image={directory_image}"
    result = mkosi("-t", "portable", base, "-o", "lonely_2.raw", "build", cwd=tmp_path, check=False)
    assert result.returncode == 1
    line = next(line for line in result.stderr.splitlines() if line.startswith("mkosi: "))
    assert line.startswith("mkosi: no unit in /etc/systemd/system or /usr/lib/systemd/system is named lonely.service")
    assert line.endswith("portablectl would attach nothing from lonely_2.raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lonely_2.raw.log"]


@pytest.fixture(scope="module")
def bootable_with_sysext(sysext: Path, module_dir: ModuleDir) -> Path:
    """A bootable Debian image whose /var/lib/extensions holds the sysext and its root hash."""
    project = module_dir("sysext-boot")
    (project / "mkosi.default").write_text(
        "[Distribution]\nDistribution=debian\nRelease=bookworm\n\n"
        "[Output]\nFormat=raw_gpt\nBootable=yes\nOutput=booted.raw\n"
    )
    extra = project / "mkosi.extra"
    extensions = extra / "var/lib/extensions"
    extensions.mkdir(parents=True)
    shutil.copy(sysext, extensions / sysext.name)
    shutil.copy(sysext.with_name("mkosi-ext.roothash"), extensions / "mkosi-ext.roothash")
    units = extra / "etc/systemd/system"
    _write(units / "mkosi-start-ext.service", STARTER_UNIT)
    (units / "multi-user.target.wants").mkdir()
    (units / "multi-user.target.wants/mkosi-start-ext.service").symlink_to("../mkosi-start-ext.service")
    (units / "sysinit.target.wants").mkdir()
    (units / "sysinit.target.wants/systemd-sysext.service").symlink_to("/lib/systemd/system/systemd-sysext.service")
    mkosi("build", cwd=project)
    return project / "booted.raw"


def test_systemd_merges_the_sysext_at_boot(bootable_with_sysext: Path) -> None:
    console = boot(bootable_with_sysext.parent, until=[MARKER], timeout=BOOT_TIMEOUT)
    line = next((line for line in console.splitlines() if MARKER in line), None)
    assert line is not None, console[-3000:]
    assert "ID=debian VERSION_ID=12 ARCHITECTURE=x86-64" in line and "tree=/usr/bin/tree" in line


def test_a_raw_disk_with_an_ext4_root_is_a_base_too(bootable_with_sysext: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    _write(extra / "usr/lib/mkosi-raw-base/file", "on a raw base\n")
    base = f"--base-image={bootable_with_sysext}"
    mkosi("-t", "sysext", base, f"--extra-tree={extra}", "-o", "on-raw.raw", "build", cwd=tmp_path)
    data, _ = _partitions(tmp_path / "on-raw.raw", tmp_path)
    # The bootable image's own extension in /var/lib/extensions is no part of it: only /usr and /opt.
    assert _listing(data) == [
        "usr",
        "usr/lib",
        "usr/lib/extension-release.d",
        "usr/lib/extension-release.d/extension-release.on-raw",
        "usr/lib/mkosi-raw-base",
        "usr/lib/mkosi-raw-base/file",
    ]
