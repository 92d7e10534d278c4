"""Real Debian bookworm images, checked with the tools users would check them with."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi import ownership
from mkosi.package_managers import apt_bootstrap
from tests.integration.support import CACHE, LEFT_OUT, log_events, mkosi, own_cache


def _in_tree(tree: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # Read-only, so that running it leaves the shared image as the build made it.
        [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--read-only",
            "-D",
            str(tree),
            *command,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_NSPAWN_LOCK": "0"},
    )


def test_directory_image_is_debian_bookworm(directory_image: Path) -> None:
    os_release = (directory_image / "usr/lib/os-release").read_text()
    assert "ID=debian" in os_release
    assert "VERSION_CODENAME=bookworm" in os_release


def test_directory_image_has_extra_tree_and_settings(directory_image: Path) -> None:
    assert (directory_image / "etc/mkosi-test-marker").read_text() == "from mkosi.extra\n"
    assert (directory_image / "etc/hostname").read_text() == "mkosi-test\n"
    assert (directory_image / "etc/machine-id").read_text() == ""
    assert not (directory_image / "etc/resolv.conf").exists()


def test_directory_image_has_no_documentation(directory_image: Path) -> None:
    assert list((directory_image / "usr/share/doc").iterdir()) == []
    assert list((directory_image / "usr/share/man").rglob("*.gz")) == []
    # dpkg keeps it out of what is installed into the image later too.
    assert "path-exclude=/usr/share/man/*" in (directory_image / "etc/dpkg/dpkg.cfg.d/mkosi-nodoc").read_text()


def test_package_from_packages_is_installed(directory_image: Path) -> None:
    status = subprocess.run(["dpkg", f"--root={directory_image}", "-s", "less"], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "Status: install ok installed" in status.stdout


def test_image_runs_in_nspawn(directory_image: Path) -> None:
    result = _in_tree(directory_image, "/bin/true")
    assert result.returncode == 0, result.stderr
    result = _in_tree(directory_image, "/bin/sh", "-c", "dpkg-query -W -f='${Version}' less")
    assert result.returncode == 0 and result.stdout, result.stderr


@pytest.fixture
def scratch_image(debian_project: Path, directory_image: Path) -> Iterator[str]:
    """A copy of the built image for verbs that write to it (nspawn adds resolv.conf, a journal…)."""
    subprocess.run(["cp", "-a", str(directory_image), str(debian_project / "scratch-image")], check=True)
    yield "scratch-image"
    subprocess.run(["rm", "-rf", str(debian_project / "scratch-image")], check=True)


def test_mkosi_shell_runs_a_command_in_the_image(debian_project: Path, scratch_image: str) -> None:
    result = mkosi("-t", "directory", "-o", scratch_image, "shell", "cat", "/etc/hostname", cwd=debian_project)
    assert "mkosi-test" in result.stdout
    failing = mkosi("-t", "directory", "-o", scratch_image, "shell", "sh", "-c", "exit 3", cwd=debian_project,
                    check=False)  # fmt: skip
    assert failing.returncode == 3  # the command's status is mkosi's


def test_mkosi_boot_reaches_a_login_prompt_and_stops_on_sigterm(debian_project: Path, scratch_image: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mkosi", "-t", "directory", "-o", scratch_image, "boot"],
        cwd=debian_project,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    console = b""
    deadline = time.monotonic() + 120
    while b"login:" not in console and time.monotonic() < deadline and process.poll() is None:
        console += process.stdout.read() or b""
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert b"login:" in console, console[-2000:].decode(errors="replace")
    assert b"Debian GNU/Linux 12" in console
    leftovers = subprocess.run(["pgrep", "-f", scratch_image], capture_output=True, text=True).stdout
    assert leftovers == ""


def test_every_installed_file_is_intact(directory_image: Path) -> None:
    """dpkg's own checks: every package fully installed, each of its files there with its checksum."""
    verify = subprocess.run(["dpkg", f"--root={directory_image}", "--verify"], capture_output=True, text=True)
    assert [line for line in verify.stdout.splitlines() if not LEFT_OUT.match(line)] == [], verify.stderr
    audit = subprocess.run(["dpkg", f"--root={directory_image}", "--audit"], capture_output=True, text=True)
    assert audit.returncode == 0 and audit.stdout == "", audit.stdout
    status = (directory_image / "var/lib/dpkg/status").read_text()
    assert status.count("Package: ") == status.count("Status: install ok installed\n") > 100
    # The negative case: a changed file is found.
    victim = directory_image / "usr/bin/less"
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"tampered")
        verify = subprocess.run(
            ["dpkg", f"--root={directory_image}", "--verify", "less"], capture_output=True, text=True
        )
        assert re.search(r"^\?\?5\?{6}\s+/usr/bin/less$", verify.stdout, re.MULTILINE), verify.stdout
    finally:
        victim.write_bytes(original)


def test_usr_is_merged_without_usrmerge(directory_image: Path) -> None:
    for name in ("bin", "sbin", "lib", "lib64"):
        assert os.readlink(directory_image / name) == f"usr/{name}"
    installed = subprocess.run(["dpkg-query", f"--root={directory_image}", "-W", "-f=${Package}\n"],
                               capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert "usr-is-merged" in installed
    # usrmerge would have converted the tree itself, and left perl in the image.
    assert "usrmerge" not in installed and "perl" not in installed


def test_maintainer_scripts_run_in_what_they_see_as_a_chroot(directory_image: Path) -> None:
    # As in debootstrap's chroot: a tree taken for a booted system gets libc6's `telinit u; sleep 1`.
    seen = subprocess.run(apt_bootstrap.in_tree(directory_image, ["ischroot"]), capture_output=True, text=True)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    # And it is a namespace of its own: the command is not PID 1 there, nor any host process visible.
    command = apt_bootstrap.in_tree(directory_image, ["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"])
    processes = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    assert processes[0] != "1" and int(processes[1]) <= 4, processes


def test_apt_in_the_image_knows_what_is_a_dependency(directory_image: Path) -> None:
    automatic = _in_tree(directory_image, "apt-mark", "showauto")
    assert automatic.returncode == 0, automatic.stderr
    marked = automatic.stdout.split()
    # Dependencies of the packages asked for are; those packages, and the base system, are not.
    assert "libsystemd-shared" in marked and "libexpat1" in marked
    assert not {"systemd", "dbus", "less", "apt", "libc6", "bash"} & set(marked)
    check = _in_tree(directory_image, "apt-get", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_bootstrap_leaves_no_package_lists_downloads_or_caches(directory_image: Path) -> None:
    apt_cache = directory_image / "var/cache/apt"
    assert sorted(p.name for p in apt_cache.iterdir()) == ["archives"]
    assert not list((apt_cache / "archives").glob("*.deb"))
    assert sorted(p.name for p in (directory_image / "var/lib/apt/lists").iterdir()) == ["lock", "partial"]


def test_build_log_has_subprocess_output(directory_image: Path) -> None:
    log = (directory_image.parent / "directory-image.log").read_text()
    assert "dpkg --install" in log and "apt-get -q update" in log
    assert "bootstrap: done" in log


def test_packages_reach_the_shared_cache(directory_image: Path) -> None:
    pool = CACHE / "packages" / "debian~bookworm~x86-64"
    assert any(pool.glob("less_*.deb"))


def test_tarball_lists_the_same_files_as_the_directory(directory_image: Path, tar_image: Path) -> None:
    listing = subprocess.run(
        ["tar", "--zstd", "--quoting-style=literal", "-tf", str(tar_image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    in_tar = {line.removeprefix("./").rstrip("/") for line in listing.splitlines()} - {"", "."}
    in_directory = {str(p.relative_to(directory_image)) for p in directory_image.rglob("*")}
    assert in_tar == in_directory


def _tree_listing(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry of a tree: mode, owner, group and its content's digest or link target."""
    entries = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = ""
        entries[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return entries


def test_a_workspace_on_disk_gives_the_same_tree_as_on_tmpfs(debian_project: Path, directory_image: Path) -> None:
    # The shared image was built in tmpfs (plenty of memory here), this one next to the output.
    assert "workspace (path=/dev/shm/" in (debian_project / "directory-image.log").read_text()
    on_disk = debian_project / "disk-workspace-image"
    try:
        mkosi("-t", "directory", "--workspace=disk", "-o", on_disk.name, "-f", "build", cwd=debian_project)
        assert f"workspace (path={debian_project}/" in (debian_project / "disk-workspace-image.log").read_text()
        assert _tree_listing(on_disk) == _tree_listing(directory_image)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(on_disk)], check=True)


def _stage_fates(events: list[dict[str, object]]) -> dict[str, tuple[str, bool]]:
    """Each stage's key and whether it was restored from the stage cache."""
    finished = [e for e in events if e.get("type") == "stage-finished"]
    return {str(e["stage"]): (str(e["key"]), bool(e["reused"])) for e in finished}


def _flip_a_byte_of(archive: Path, within: bytes) -> None:
    """Flip a byte inside a file's data, which tar keeps no checksum of."""
    with archive.open("r+b") as f:
        offset = f.read().index(within)
        f.seek(offset)
        f.write(bytes([within[0] ^ 0x01]))


def test_a_damaged_stage_cache_entry_is_dropped_and_rebuilt(debian_project: Path, tmp_path: Path) -> None:
    """An -i rebuild after one entry's archive was truncated and another's had a byte flipped: one
    warning for each, the stages built again, the whole tree published, intact entries stored."""
    # This test's own stage cache (it damages entries), packages from the shared pool (no downloads).
    cache = own_cache(tmp_path / "cache")
    stages = cache / "stages"
    output = debian_project / "damaged-cache-image"
    build = ("-t", "directory", "-i", f"--cache={cache}", "-o", output.name, "-f", "build")
    try:
        first = _stage_fates(log_events(mkosi(*build, cwd=debian_project).stderr))
        assert not any(reused for _, reused in first.values())
        bootstrap, last = first["bootstrap"][0], first["clean"][0]
        assert sorted(p.name for p in stages.iterdir() if not p.name.startswith(".")) == sorted(
            [bootstrap, last, "owners"]
        )
        listing = _tree_listing(output)

        truncated = stages / bootstrap / "root.tar"
        size = truncated.stat().st_size
        os.truncate(truncated, size - 4096)
        # The marker from mkosi.extra is in the last entry only: restored without a check, it would
        # come back with a byte flipped.
        _flip_a_byte_of(stages / last / "root.tar", b"from mkosi.extra")

        events = log_events(mkosi(*build, cwd=debian_project).stderr)
        warnings = [str(e["event"]) for e in events if e.get("level") == "warning"]
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith(f"stage-cache entry {stages / last} is damaged: root.tar has SHA-256 ")
        assert warnings[1] == (
            f"stage-cache entry {stages / bootstrap} is damaged: root.tar has {size - 4096} bytes, "
            f"its manifest.json records {size}; dropping it and building the stage again"
        )
        assert not any(reused for _, reused in _stage_fates(events).values())
        assert (output / "etc/mkosi-test-marker").read_text() == "from mkosi.extra\n"
        assert _tree_listing(output) == listing

        # Both entries were replaced by intact ones, which sha256sum agrees with, and nothing of the
        # damaged ones or of the restore attempts is left.
        assert sorted(p.name for p in stages.iterdir() if not p.name.endswith(".lock")) == sorted(
            [bootstrap, last, "owners"]
        )
        for key in (bootstrap, last):
            manifest = json.loads((stages / key / "manifest.json").read_text())
            # The tree, and the record of the packages the bootstrap installed.
            archives = ["packages.json.tar", "root.tar"]
            sums = subprocess.run(["sha256sum", *archives], cwd=stages / key, capture_output=True, text=True)
            digests = dict(reversed(line.split()) for line in sums.stdout.splitlines())
            assert manifest["archives"] == {
                name: {"size": (stages / key / name).stat().st_size, "sha256": digests[name]} for name in archives
            }
        assert not list(debian_project.glob(".mkosi-*"))
        # And they are trusted: the next build restores the last one without a word.
        events = log_events(mkosi(*build, cwd=debian_project).stderr)
        assert [e for e in events if e.get("level") == "warning"] == []
        assert _stage_fates(events)["clean"] == (last, True)
        assert (output / "etc/mkosi-test-marker").read_text() == "from mkosi.extra\n"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(output), f"{output}.log"], check=True)


def test_existing_output_is_refused_without_force(debian_project: Path, directory_image: Path) -> None:
    result = mkosi("-t", "directory", "-o", "directory-image", "build", cwd=debian_project, check=False)
    assert result.returncode != 0
    assert "already exists" in result.stderr and "-f" in result.stderr


def test_force_never_replaces_a_directory_mkosi_did_not_make(debian_project: Path) -> None:
    mine = debian_project / "mine"
    (mine / "etc").mkdir(parents=True)
    (mine / "etc/precious").write_text("the user's")
    try:
        result = mkosi("-t", "directory", "-o", "mine", "-f", "build", cwd=debian_project, check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"mkosi: {mine} was not made by mkosi (it has no user.mkosi.output attribute): "
            "remove it yourself or choose another output"
        )
        assert (mine / "etc/precious").read_text() == "the user's"
        assert not (debian_project / "mine.log").exists()
        assert not list(debian_project.glob(".mkosi-*mine*"))
    finally:
        subprocess.run(["rm", "-rf", str(mine)], check=True)


def test_a_failed_forced_rebuild_keeps_the_earlier_output(debian_project: Path, scratch_image: str) -> None:
    earlier = debian_project / scratch_image
    marker = (earlier / "etc/mkosi-test-marker").read_text()
    # `cp -a` kept the mark, which names the output it was published as.
    assert ownership.owner_of(earlier) == "directory-image"
    ownership.mark(earlier, scratch_image)
    failing = ("-t", "directory", "-o", scratch_image, "-p", "no-such-package-mkosi", "-f", "build")
    result = mkosi(*failing, cwd=debian_project, check=False)
    assert result.returncode != 0 and "no-such-package-mkosi" in result.stderr
    assert (earlier / "etc/mkosi-test-marker").read_text() == marker
    assert "no-such-package-mkosi" in (debian_project / f"{scratch_image}.log").read_text()
    assert not list(debian_project.glob(f".mkosi-*{scratch_image}*"))


def test_missing_package_fails_with_a_clear_error(tmp_path: Path) -> None:
    result = mkosi(
        "-d",
        "debian",
        "-r",
        "bookworm",
        "-t",
        "directory",
        "-p",
        "no-such-package-mkosi",
        "build",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "no-such-package-mkosi" in result.stderr
    assert not (tmp_path / "image").exists()
    assert not list(tmp_path.glob(".mkosi-*"))


def test_subvolume_needs_btrfs(tmp_path: Path) -> None:
    result = mkosi("-d", "debian", "-t", "subvolume", "build", cwd=tmp_path, check=False)
    # The check runs before any bootstrap work, so this fails fast.
    assert result.returncode != 0
    assert "btrfs" in result.stderr
    assert not (tmp_path / "image").exists()


def _processes_rooted_in(path: Path) -> list[int]:
    """Processes whose root directory lies in `path`: what runs chrooted into a tree there."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "root").startswith(str(path)):
                    pids.append(int(proc.name))
            except OSError:
                continue  # gone meanwhile, or a kernel thread
    return pids


@pytest.mark.parametrize(
    ("signum", "status", "moment"),
    [
        (signal.SIGTERM, 143, "downloading"),
        (signal.SIGINT, 130, "downloading"),
        # dpkg installing in the tree, chrooted in namespaces of its own, with /proc, /sys, /dev mounted.
        (signal.SIGTERM, 143, "installing"),
    ],
)
def test_signal_stops_the_build_and_leaves_nothing_behind(
    tmp_path: Path, signum: int, status: int, moment: str
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mkosi", "-d", "debian", "-t", "directory", "--workspace=disk", "build"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until the bootstrap is under way (the tree exists), or until dpkg runs in the tree.
    deadline = time.monotonic() + 120
    log = tmp_path / "image.log"
    while time.monotonic() < deadline:
        if moment == "downloading" and list(tmp_path.glob(".mkosi-workspace.*/root")):
            time.sleep(2)
            break
        if moment == "installing" and log.exists() and "dpkg --install" in log.read_text(errors="replace"):
            time.sleep(1)
            assert _processes_rooted_in(tmp_path), "dpkg should be running in the tree"
            # A second build of the same output meanwhile is refused at once, naming the first.
            second = mkosi("-d", "debian", "-t", "directory", "--workspace=disk", "build", cwd=tmp_path, check=False)
            assert second.returncode == 1
            assert f"is being built by another mkosi (pid {process.pid})" in second.stderr
            break
        time.sleep(0.2)
    stopped_at = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped_at < 15
    assert process.returncode == status, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.log"]
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers == ""
    assert _processes_rooted_in(tmp_path) == []


def test_after_kill_9_nothing_runs_on_and_the_next_build_needs_no_cleanup(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "mkosi",
        f"--cache={CACHE / 'packages'}",
        "-d",
        "debian",
        "-t",
        "directory",
        "--workspace=disk",
    ]
    process = subprocess.Popen([*argv, "build"], cwd=tmp_path, stderr=subprocess.DEVNULL)
    log = tmp_path / "image.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "dpkg --install" in log.read_text(errors="replace")):
        assert time.monotonic() < deadline and process.poll() is None, "dpkg never started"
        time.sleep(0.2)
    time.sleep(1)
    assert _processes_rooted_in(tmp_path), "dpkg should be running in the tree"
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Nothing of the build outlives it: the kernel kills its commands, their namespaces go with them.
    deadline = time.monotonic() + 10
    while _processes_rooted_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_rooted_in(tmp_path) == []
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
    assert list(tmp_path.glob(".mkosi-workspace.*")), "SIGKILL leaves its workspace behind"
    # The next build succeeds as it is, and removes what the killed one left.
    mkosi("-d", "debian", "-t", "directory", "--workspace=disk", "build", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image", "image.log"]


@pytest.fixture
def btrfs_directory(tmp_path: Path) -> Iterator[Path]:
    image, mountpoint = tmp_path / "btrfs.img", tmp_path / "mnt"
    subprocess.run(["truncate", "--size=2G", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "--quiet", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_subvolume_output_on_btrfs(btrfs_directory: Path) -> None:
    mkosi("-d", "debian", "-r", "bookworm", "-t", "subvolume", "build", cwd=btrfs_directory)
    image = btrfs_directory / "image"
    show = subprocess.run(["btrfs", "subvolume", "show", str(image)], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "VERSION_CODENAME=bookworm" in (image / "usr/lib/os-release").read_text()
