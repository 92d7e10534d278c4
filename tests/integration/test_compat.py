"""A project of the mkosi.default era (v3-v14), built and booted as it is.

The project (compat-project/) uses the v6+ [Content] section, the gpt_btrfs format name, a
mkosi.default.d/ drop-in without .conf, mkosi.skeleton/, mkosi.extra/, mkosi.postinst, an empty
Password= and a mkosi.build that runs make and make install into $DESTDIR. One qemu boot shows
that all of it reached the image, and that a btrfs root is found without root= or fstab (the
suite's only boot of a btrfs root: test_disk boots the ext4 one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import ModuleDir, boot, mkosi

PROJECT = Path(__file__).parent / "compat-project"
MARKER = "MKOSI-COMPAT-OK"
BOOT_TIMEOUT = 240  # TCG on two shared cores
ESP, ROOT = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"


@pytest.fixture(scope="module")
def project(module_dir: ModuleDir) -> Path:
    directory = module_dir("compat") / "project"
    shutil.copytree(PROJECT, directory, symlinks=True)
    return directory


def test_summary_reads_the_old_layout_without_warnings(project: Path) -> None:
    summary = mkosi("summary", cwd=project).stdout
    lines = [line.split() for line in summary.splitlines()]
    assert ["Format:", "raw_btrfs"] in lines and ["Output:", str(project / "compat_14.raw")] in lines
    assert ["BuildPackages:", "gcc", "make", "libc6-dev"] in lines  # the inline comment is gone
    assert ["Hostname:", "compat-host"] in lines
    assert not summary.startswith("Warning")


def test_the_installed_program_runs_at_boot(project: Path) -> None:
    mkosi("build", cwd=project)
    # Named as mkosi v13 and v14 named it: ImageId_ImageVersion, the root partition too.
    table = subprocess.run(["sfdisk", "-J", str(project / "compat_14.raw")], capture_output=True, text=True, check=True)
    partitions = json.loads(table.stdout)["partitiontable"]["partitions"]
    assert [(p["type"].lower(), p["name"]) for p in partitions] == [(ESP, "esp"), (ROOT, "compat_14")]
    console = boot(project, until=[MARKER], timeout=BOOT_TIMEOUT)
    line = next((line for line in console.splitlines() if MARKER in line), None)
    assert line is not None, console[-3000:]
    said = f"{MARKER} compat-era image=compat-14 skeleton=from-skeleton hostname=compat-host password=[]"
    assert f"{said} root=btrfs fstab=0" in line
