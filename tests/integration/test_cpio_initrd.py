"""`-t cpio` as the initrd of a qemu boot: the kernel unpacks the archive and runs its `/init`.

The tree has systemd, so the cpio output gives it `/init -> usr/lib/systemd/systemd`; that link
is what runs as PID 1 here, and a unit of the image prints a marker to the console. The tree has no
/etc/initrd-release, so systemd boots it as the system itself (multi-user.target on the unpacked
rootfs), not as an initrd that looks for a root to switch to: the property under test is the
archive and its /init, not an initrd's root discovery (the bootable disks' dracut initrds do that).

The kernel is Debian's own (linux-image-*-amd64 from the shared package pool, or downloaded with
the host's apt): a kernel in the tree would put 400 MB of modules into the archive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.support import CACHE, mkosi

MARKER = "MKOSI-CPIO-INITRD-OK"
BOOT_TIMEOUT = 240  # TCG on two shared cores
UNIT = f"""\
[Unit]
Description=Tell the test harness that the cpio archive booted
# Not after multi-user.target: the tree has no udev, so the serial getty waits 90 s for its device.
After=basic.target

[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/console
ExecStart=/bin/sh -c 'echo "{MARKER} pid1=$(cat /proc/1/comm) init=$(readlink /init) root=$(findmnt -no FSTYPE /)"'

[Install]
WantedBy=multi-user.target
"""


def _kernel_package(directory: Path) -> Path:
    pool = sorted((CACHE / "packages/debian~bookworm~x86-64").glob("linux-image-6.*-amd64_*.deb"))
    if pool:
        return pool[-1]
    depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True)
    name = next(line.split()[-1] for line in depends.stdout.splitlines() if "Depends: linux-image-" in line)
    subprocess.run(["apt-get", "download", "-q", name], cwd=directory, check=True, capture_output=True)
    return next(directory.glob(f"{name}_*.deb"))


def _vmlinuz(directory: Path) -> Path:
    package = _kernel_package(directory)
    subprocess.run(f"dpkg-deb --fsys-tarfile '{package}' | tar -x -C '{directory}' --wildcards './boot/vmlinuz-*'",
                   shell=True, check=True)  # fmt: skip
    return next((directory / "boot").glob("vmlinuz-*"))


def test_a_cpio_archive_boots_as_the_initrd_and_runs_its_init(tmp_path: Path) -> None:
    project = tmp_path / "project"
    units = project / "mkosi.extra/etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "cpio-marker.service").write_text(UNIT)
    (units / "multi-user.target.wants/cpio-marker.service").symlink_to("../cpio-marker.service")
    mkosi("-d", "debian", "-r", "bookworm", "-t", "cpio", "--compress=zstd", "-p", "systemd", "build", cwd=project)
    initrd = project / "image.cpio.zst"
    kernel = _vmlinuz(tmp_path)
    console = tmp_path / "console.log"
    qemu = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "1536", "-smp", "2", "-nographic",
        "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 systemd.show_status=0",
        "-serial", f"file:{console}", "-monitor", "none",
    ]  # fmt: skip
    with (tmp_path / "qemu.log").open("w") as log:
        process = subprocess.Popen(qemu, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if console.exists() and MARKER in console.read_text(errors="replace"):
                break
            time.sleep(1)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    text = console.read_text(errors="replace") if console.exists() else ""
    line = next((line for line in text.splitlines() if line.startswith(MARKER)), None)
    assert line is not None, text[-3000:] + (tmp_path / "qemu.log").read_text()
    # The kernel ran the archive's /init, the link the cpio output made to systemd, on the unpacked archive.
    assert line.split()[1:] == ["pid1=systemd", "init=usr/lib/systemd/systemd", "root=rootfs"]
