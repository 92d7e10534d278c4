"""arm64 images built on this x86-64 host: a two-architecture matrix (directory and raw_gpt), whose
arm64 bootstrap runs its maintainer scripts (and mkosi.postinst) through qemu-user-static."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mkosi.architecture import Architecture
from mkosi.binfmt import BINFMT_DIR
from tests.integration.support import CACHE, LEFT_OUT, ModuleDir, Result, boot, log_events, mkosi

pytestmark = pytest.mark.skipif(not Architecture.x86_64.native, reason="builds arm64 on an x86-64 host")

MATRIX = """
[matrix]
Distribution = ["debian"]
Release = ["bookworm"]
Architecture = ["x86-64", "arm64"]
Format = ["directory", "raw_gpt"]

[release]
Directory = "release"
"""
# Run inside the tree, under emulation for arm64: what the image's own tools say they are.
POSTINST = """#!/bin/sh
set -e
dpkg --print-architecture > /etc/built-for
uname -m >> /etc/built-for
"""
CELLS = {
    Architecture.x86_64: ("debian-bookworm-x86_64-directory", "debian-bookworm-x86_64-raw_gpt"),
    Architecture.arm64: ("debian-bookworm-arm64-directory", "debian-bookworm-arm64-raw_gpt"),
}


# The release directory, the matrix run, and the host's binfmt handlers before and after it.
Release = tuple[Path, subprocess.CompletedProcess[str], set[str], set[str]]


def _handlers() -> set[str]:
    if not (BINFMT_DIR / "register").exists():
        return set()
    return {p.name for p in BINFMT_DIR.iterdir()} - {"register", "status"}


@pytest.fixture(scope="module")
def release(module_dir: ModuleDir) -> Release:
    project = module_dir("foreign")
    (project / "mkosi.default").write_text(f"[Packages]\nCache={CACHE / 'packages'}\n")
    (project / "mkosi.matrix").write_text(MATRIX)
    (project / "mkosi.postinst").write_text(POSTINST)
    (project / "mkosi.postinst").chmod(0o755)
    before = _handlers()
    result = subprocess.run(
        [sys.executable, "-m", "mkosi", "matrix", "-C", str(project), "--jobs", "2"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return project / "release", result, before, _handlers()


@pytest.fixture(scope="module")
def arm64_tree(release: Release, module_dir: ModuleDir) -> Path:
    tree = module_dir("arm64-tree")
    archive = release[0] / f"{CELLS[Architecture.arm64][0]}.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-xf", str(archive), "-C", str(tree)], check=True)
    return tree


def test_the_matrix_publishes_four_artifacts_from_two_bootstraps(
    release: Release,
) -> None:
    directory = release[0]
    cells = {cell["name"]: cell for cell in json.loads((directory / "manifest.json").read_text())["cells"]}
    assert sorted(cells) == sorted(name for names in CELLS.values() for name in names)
    assert all(cell["status"] == "success" for cell in cells.values())
    bootstraps = {
        architecture: {s["key"] for name in names for s in cells[name]["stages"] if s["name"] == "bootstrap"}
        for architecture, names in CELLS.items()
    }
    # One per architecture, shared by both formats; never one for both.
    assert all(len(keys) == 1 for keys in bootstraps.values()), bootstraps
    assert bootstraps[Architecture.x86_64] != bootstraps[Architecture.arm64]
    artifacts = [a["name"] for cell in cells.values() for a in cell["artifacts"]]
    assert sorted(artifacts) == sorted(
        [*(f"{d}.tar" for d, _ in CELLS.values()), *(f"{r}.raw" for _, r in CELLS.values())]
    )
    assert all((directory / name).is_file() for name in artifacts)
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=directory, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_program_of_the_arm64_tree_is_aarch64(arm64_tree: Path) -> None:
    programs = sorted(p for p in (arm64_tree / "usr/bin").iterdir() if p.is_file() and not p.is_symlink())
    described = subprocess.run(["file", "-b", *map(str, programs)], capture_output=True, text=True, check=True)
    elves = [line for line in described.stdout.splitlines() if line.startswith("ELF")]
    assert len(elves) > 50
    assert all("ARM aarch64" in line for line in elves), [line for line in elves if "aarch64" not in line][:3]


def test_the_arm64_trees_own_tools_ran_under_emulation_and_its_packages_verify(arm64_tree: Path) -> None:
    # mkosi.postinst ran inside the tree: arm64's dpkg and uname answered through qemu-user.
    assert (arm64_tree / "etc/built-for").read_text().split() == ["arm64", "aarch64"]
    # The tree's own dpkg, which honours the image's path-exclude (no documentation), under emulation.
    verified = _shell(arm64_tree, "/usr/bin/dpkg", "--verify")
    problems = [line for line in verified.stdout.splitlines() if not LEFT_OUT.match(line)]
    assert "missing     /usr/share/doc/bash/README.gz" in verified.stdout  # it did check every file
    assert problems == [], problems[:5]


def test_the_arm64_disk_has_the_arm64_root_partition_type(
    release: Release,
) -> None:
    directory = release[0]
    for architecture, (_, disk) in CELLS.items():
        table = json.loads(
            subprocess.run(
                ["sfdisk", "-J", str(directory / f"{disk}.raw")], capture_output=True, text=True, check=True
            ).stdout
        )
        types = [p["type"].lower() for p in table["partitiontable"]["partitions"]]
        assert types == [str(architecture.root_type)], (architecture, types)


def test_the_host_keeps_the_binfmt_handlers_it_had(
    release: Release,
) -> None:
    _, result, before, after = release
    assert after == before
    events = [e for e in log_events(result.stderr) if "binfmt" in str(e.get("event"))]
    assert events, "the arm64 builds said nothing about emulation"


def _shell(tree: Path, *command: str) -> Result:
    argv = ["-d", "debian", "-r", "bookworm", "--architecture=arm64", "-t", "directory", "-o", str(tree)]
    return mkosi(*argv, "shell", *command, cwd=tree.parent)


def test_mkosi_shell_runs_the_arm64_trees_programs(arm64_tree: Path) -> None:
    before = _handlers()
    result = _shell(arm64_tree, "/usr/bin/uname", "-m")
    assert result.stdout.strip().splitlines()[-1] == "aarch64", result.stdout + result.stderr
    assert _handlers() == before


# ---- a bootable arm64 disk, booted in qemu-system-aarch64 (TCG, AAVMF) ----

MARKER = "MKOSI-ARM64-BOOT-OK"
# As early as the root is there (emulated arm64 is slow: the rest of the boot proves nothing more).
MARKER_UNIT = f"""\
[Unit]
Description=Tell the test harness what booted
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{MARKER} $(uname -m) root=$(findmnt -no SOURCE /)" > /dev/kmsg'

[Install]
WantedBy=sysinit.target
"""
BOOTABLE = ("-d", "debian", "-r", "bookworm", "--architecture=arm64", "-t", "raw_gpt", "--bootable", "--verity")
# TCG emulating arm64 on two shared cores: the root is mounted after about 75 s, the marker follows.
ARM64_BOOT_TIMEOUT = 420


@pytest.fixture(scope="module")
def bootable(module_dir: ModuleDir) -> Path:
    project = module_dir("arm64-bootable")
    units = project / "mkosi.extra/etc/systemd/system"
    (units / "sysinit.target.wants").mkdir(parents=True)
    (units / "mkosi-marker.service").write_text(MARKER_UNIT)
    (units / "sysinit.target.wants/mkosi-marker.service").symlink_to("../mkosi-marker.service")
    # -i: the shared stage cache keeps the bootstrap (dracut under emulation takes minutes) across runs.
    mkosi(*BOOTABLE, "-i", "-o", "image.raw", "build", cwd=project)
    return project / "image.raw"


ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


def _partition_types(image: Path) -> list[str]:
    listed = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True)
    return [p["type"].lower() for p in json.loads(listed.stdout)["partitiontable"]["partitions"]]


def _esp(image: Path) -> str:
    """The image's ESP as mtools names it (no vfat mounts here): the image at the partition's offset."""
    listed = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True)
    partitions = json.loads(listed.stdout)["partitiontable"]["partitions"]
    esp = next(p for p in partitions if p["type"].lower() == ESP_TYPE)
    return f"{image}@@{int(esp['start']) * 512}"


def test_the_arm64_disk_has_arm64s_partitions_boot_loader_and_uki(bootable: Path, tmp_path: Path) -> None:
    arm64 = Architecture.arm64
    assert _partition_types(bootable) == [ESP_TYPE, str(arm64.root_type), str(arm64.root_verity_type)]
    esp = _esp(bootable)
    listing = subprocess.run(["mdir", "-b", "-i", esp, "::EFI/Linux"], capture_output=True, text=True, check=True)
    (uki_path,) = [line for line in listing.stdout.split() if line.endswith(".efi")]
    loader, uki = tmp_path / "BOOTAA64.EFI", tmp_path / "uki.efi"
    for inside, copy in (("::EFI/BOOT/BOOTAA64.EFI", loader), (f"::{uki_path.removeprefix('::')}", uki)):
        subprocess.run(["mcopy", "-n", "-i", esp, inside, str(copy)], check=True)
        header = subprocess.run([arm64.binutil("objdump"), "-f", str(copy)], capture_output=True, text=True, check=True)
        assert "file format pei-aarch64-little" in header.stdout, header.stdout
    sections = subprocess.run([arm64.binutil("objdump"), "-h", str(uki)], capture_output=True, text=True, check=True)
    assert all(name in sections.stdout for name in (".osrel", ".cmdline", ".linux", ".initrd"))
    # The kernel inside is arm64's EFI program, unpacked from Debian's gzip vmlinuz: "MZ", then
    # the arm64 Image's magic at 0x38.
    linux = tmp_path / "linux"
    extract = [arm64.binutil("objcopy"), "-O", "binary", "--only-section=.linux", str(uki), str(linux)]
    subprocess.run(extract, check=True)
    kernel = linux.read_bytes()
    assert kernel[:2] == b"MZ" and kernel[0x38:0x3C] == b"ARM\x64"


def test_the_arm64_disk_boots_in_qemu_to_its_verity_root(bootable: Path) -> None:
    console = boot(bootable.parent, *BOOTABLE, "-o", bootable.name, until=[MARKER], timeout=ARM64_BOOT_TIMEOUT)
    line = next((line for line in console.splitlines() if MARKER in line), None)
    assert line is not None, console[-3000:]
    assert f"{MARKER} aarch64 root=/dev/mapper/root" in line
    assert "Detected architecture arm64" in console
    assert subprocess.run(["pgrep", "-f", f"file={bootable}"], capture_output=True).returncode == 1, "qemu left behind"
