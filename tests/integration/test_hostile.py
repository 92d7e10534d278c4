"""Hostile input, tried for real: a mkosi.extra full of what trips up copies, links that point at the
build host's files, scripts that try to reach the host's network, devices and files, and secrets
watched for in every process's command line, the log, the summary and the image.

Every build here shares one stage cache of the module's own (packages from the shared pool), so the
distribution is installed once and each build after it takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.integration.support import CACHE, ModuleDir, Result, mkosi
from tests.processes import Watch

BASE = ("-d", "debian", "-r", "bookworm", "-p", "less", "-i")
PASSWORD = "pw-7c1e0f9a-never-shown"
PASSPHRASE = "luks-passphrase-3b8d2a61-never-shown"
SPARSE_SIZE = 2 * 1024**3
# Names no text encoding promises to carry: a line break, and bytes that are not UTF-8.
ODD_NAMES = (b"srv/new\nline", b"srv/\xff\xfe-latin1")


@pytest.fixture(scope="module")
def cache(module_dir: ModuleDir) -> Path:
    cache = module_dir("hostile-cache")
    pool = CACHE / "packages" / "debian~bookworm~x86-64"
    pool.mkdir(parents=True, exist_ok=True)
    (cache / pool.name).symlink_to(pool)
    return cache


@pytest.fixture(scope="module")
def host(module_dir: ModuleDir) -> Path:
    """Files and directories of the build host that the project's links and scripts aim at."""
    host = module_dir("host")
    for name in ("hostname-target", "machine-id-target", "planted-target", "postinst-target"):
        (host / name).write_text(f"the host's {name}\n")
    (host / "docs").mkdir()
    (host / "docs/README").write_text("the host's docs\n")
    return host


def _host_untouched(host: Path) -> None:
    for name in ("hostname-target", "machine-id-target", "planted-target", "postinst-target"):
        assert (host / name).read_text() == f"the host's {name}\n", name
    assert sorted(p.name for p in host.iterdir()) == [
        "docs", "hostname-target", "machine-id-target", "planted-target", "postinst-target"
    ]  # fmt: skip
    assert (host / "docs/README").read_text() == "the host's docs\n"


@dataclass
class Built:
    result: Result
    # Processes other than mkosi itself whose command line or environment held a secret.
    leaks: dict[int, bytes]
    # Whether mkosi's own command line did (the watch would see it: mkosi refuses a secret there).
    mkosi_had_it: bool
    commands: set[str]


def _build(project: Path, cache: Path, *args: str, secrets: Sequence[str] = (), check: bool = True) -> Built:
    """mkosi with `args`, every process watched for `secrets` while it runs."""
    return _watched([sys.executable, "-m", "mkosi", f"--cache={cache}", *BASE, *args], project, secrets, check)


def _watched(argv: list[str], project: Path, secrets: Sequence[str], check: bool) -> Built:
    # Only builds with secrets are watched: the watch takes a share of a core.
    with Watch([s.encode() for s in secrets]) if secrets else contextlib.nullcontext(Watch([])) as watch:
        process = subprocess.Popen(
            argv, cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # The root password, for --password=- (what nothing else reads).
        stdout, stderr = process.communicate(input=f"{PASSWORD}\n")
    # mkosi, and its children caught between fork and exec, which still show (the start of) mkosi's
    # command line.
    mkosi_cmdline = b"\0".join(map(os.fsencode, argv)) + b"\0"
    own = {pid for pid, cmdline in watch.leaks.items() if cmdline.startswith(mkosi_cmdline)}
    leaks = {pid: cmdline for pid, cmdline in watch.leaks.items() if pid not in own}
    built = Built(Result(process.returncode, stdout, stderr), leaks, process.pid in own, watch.commands)
    if check and process.returncode != 0:
        raise AssertionError(f"{argv[3:]} failed with {process.returncode}:\n{stderr[-4000:]}")
    return built


# ---- mkosi.extra ----


def _make_extra(extra: Path, host: Path) -> None:
    (extra / "etc").mkdir(parents=True)
    (extra / "etc/x").symlink_to("/etc/shadow")
    (extra / "a").symlink_to("../../..")
    # Where the configure stage writes: links to files of the host.
    (extra / "etc/hostname").symlink_to(host / "hostname-target")
    (extra / "etc/machine-id").symlink_to(host / "machine-id-target")
    # Over the link the first extra tree plants (see the project): a file must replace it.
    (extra / "etc/planted").write_text("from mkosi.extra\n")
    (extra / "srv").mkdir()
    os.mknod(extra / "srv/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (extra / "usr/local/bin").mkdir(parents=True)
    (extra / "usr/local/bin/suid").write_text("#!/bin/sh\n")
    (extra / "usr/local/bin/suid").chmod(0o4755)
    (extra / "usr/local/share").mkdir(parents=True)
    (extra / "usr/local/share/one").write_text("one inode\n")
    os.link(extra / "usr/local/share/one", extra / "usr/local/share/two")
    os.link(extra / "usr/local/share/one", extra / "srv/three")
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(extra), name), "wb") as f:
            f.write(name)
    with open(extra / "srv/sparse", "wb") as f:
        f.write(b"start")
        f.seek(SPARSE_SIZE - 3)
        f.write(b"end")


@pytest.fixture(scope="module")
def extra_project(module_dir: ModuleDir, host: Path) -> Path:
    project = module_dir("hostile-extra")
    _make_extra(project / "mkosi.extra", host)
    # An extra tree before mkosi.extra plants a link to the host where mkosi.extra has a file.
    (project / "planting/etc").mkdir(parents=True)
    (project / "planting/etc/planted").symlink_to(host / "planted-target")
    return project


EXTRA_ARGS = ("--extra-tree=planting", "--hostname=hostile", "--password=-")


@pytest.fixture(scope="module")
def directory_build(extra_project: Path, cache: Path) -> tuple[Path, Built]:
    built = _build(extra_project, cache, "-t", "directory", "-o", "tree", *EXTRA_ARGS, secrets=[PASSWORD])
    return extra_project / "tree", built


@pytest.fixture(scope="module")
def tar_build(extra_project: Path, cache: Path, directory_build: tuple[Path, Built]) -> Path:
    _build(extra_project, cache, "-t", "tar", "-o", "image.tar", *EXTRA_ARGS)
    return extra_project / "image.tar"


def test_extra_tree_contents_are_copied_as_what_they_are(directory_build: tuple[Path, Built]) -> None:
    tree = directory_build[0]
    assert os.readlink(tree / "etc/x") == "/etc/shadow" and os.readlink(tree / "a") == "../../.."
    node = (tree / "srv/null").lstat()
    assert stat.S_ISCHR(node.st_mode) and node.st_rdev == os.makedev(1, 3)
    suid = (tree / "usr/local/bin/suid").stat()
    assert stat.S_IMODE(suid.st_mode) == 0o4755 and suid.st_uid == 0
    inodes = {(tree / p).stat().st_ino for p in ("usr/local/share/one", "usr/local/share/two", "srv/three")}
    assert len(inodes) == 1 and (tree / "srv/three").stat().st_nlink == 3
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(tree), name), "rb") as f:
            assert f.read() == name
    sparse = (tree / "srv/sparse").stat()
    assert sparse.st_size == SPARSE_SIZE and sparse.st_blocks * 512 < 1024**2  # still a few KiB on disk
    with open(tree / "srv/sparse", "rb") as f:
        assert f.read(5) == b"start" and f.seek(SPARSE_SIZE - 3) and f.read() == b"end"


def test_no_write_goes_through_a_link_to_the_host(directory_build: tuple[Path, Built], host: Path) -> None:
    tree = directory_build[0]
    _host_untouched(host)
    assert (tree / "etc/planted").read_text() == "from mkosi.extra\n" and not (tree / "etc/planted").is_symlink()
    assert (tree / "etc/hostname").read_text() == "hostile\n" and not (tree / "etc/hostname").is_symlink()
    assert (tree / "etc/machine-id").read_text() == "" and not (tree / "etc/machine-id").is_symlink()


def _member_problems(archive: Path, kept_as_given: set[str]) -> list[str]:
    """What in the tar could escape the directory it is extracted to: absolute names, `..`, hard
    links to outside, relative links that climb above the top (but those in `kept_as_given`)."""
    problems = []
    with tarfile.open(archive) as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            depth = len([p for p in name.parts if p != "."]) - 1
            if name.is_absolute() or ".." in name.parts:
                problems.append(f"member name {member.name!r}")
            if member.islnk() and (member.linkname.startswith("/") or ".." in PurePosixPath(member.linkname).parts):
                problems.append(f"hard link {member.name!r} -> {member.linkname!r}")
            if member.issym() and not member.linkname.startswith("/") and member.name not in kept_as_given:
                climbs = 0
                for part in PurePosixPath(member.linkname).parts:
                    climbs = climbs + 1 if part == ".." else climbs - 1 if part != "." else climbs
                    if climbs > depth:
                        problems.append(f"link {member.name!r} -> {member.linkname!r} climbs above the top")
                        break
    return problems


def test_tar_members_stay_inside_and_are_what_the_tree_held(tar_build: Path) -> None:
    # mkosi.extra's own a -> ../../.. is kept as the user made it; nothing else may climb out.
    assert _member_problems(tar_build, kept_as_given={"./a"}) == []
    with tarfile.open(tar_build) as tar:
        members = {m.name: m for m in tar}
    assert members["./etc/x"].issym() and members["./etc/x"].linkname == "/etc/shadow"
    assert members["./a"].linkname == "../../.."
    node = members["./srv/null"]
    assert node.ischr() and (node.devmajor, node.devminor) == (1, 3)
    assert members["./usr/local/bin/suid"].mode == 0o4755
    # Archived in name order: srv/three first, the other two names of its inode as hard links to it.
    linked = [m for m in members.values() if m.islnk() and m.name.startswith(("./usr/local/", "./srv/"))]
    assert sorted(m.name for m in linked) == ["./usr/local/share/one", "./usr/local/share/two"]
    assert members["./srv/three"].isreg() and {m.linkname for m in linked} == {"./srv/three"}
    for name in ODD_NAMES:
        assert "./" + os.fsdecode(name) in members
    assert members["./srv/sparse"].size == SPARSE_SIZE and members["./srv/sparse"].sparse
    assert tar_build.stat().st_size < 1024**3  # not 2 GiB of zeros


RELEASE_MATRIX = """
[matrix]
Format = ["directory"]
[defaults]
Distribution = "debian"
Release = "bookworm"
Packages = ["less"]
Cache = "@CACHE@"
ExtraTrees = "planting"
Password = "@PASSWORD@"
"""


@pytest.fixture(scope="module")
def release(extra_project: Path, cache: Path, tar_build: Path) -> tuple[Path, Built]:
    """The hostile project as a one-cell release: its tree packed into the release as a tarball."""
    matrix = RELEASE_MATRIX.replace("@CACHE@", str(cache)).replace("@PASSWORD@", PASSWORD)
    (extra_project / "mkosi.matrix").write_text(matrix)
    argv = [sys.executable, "-m", "mkosi", "matrix", "-C", str(extra_project), "--jobs", "1"]
    return extra_project / "release", _watched(argv, extra_project, [PASSWORD], check=True)


def test_a_release_tar_has_no_member_that_leaves_its_directory(release: tuple[Path, Built]) -> None:
    tarball = release[0] / "directory.tar"
    assert _member_problems(tarball, kept_as_given={"./a"}) == []
    with tarfile.open(tarball) as tar:
        assert tar.getmember("./a").linkname == "../../.."  # kept as the user made it
        assert tar.getmember("./srv/sparse").sparse


# ---- secrets ----


def test_the_root_password_shows_nowhere(directory_build: tuple[Path, Built], extra_project: Path) -> None:
    tree, built = directory_build
    assert not built.mkosi_had_it and built.leaks == {}  # --password=- read it from standard input
    log = (extra_project / "tree.log").read_bytes()
    assert b"openssl passwd" in log and PASSWORD.encode() not in log  # every command line mkosi ran
    assert PASSWORD not in built.result.stdout + built.result.stderr
    summary = mkosi("-C", extra_project, *EXTRA_ARGS, "summary", cwd=extra_project, stdin=f"{PASSWORD}\n").stdout
    assert "Password:" in summary and PASSWORD not in summary
    assert (tree / "etc/shadow").read_text().startswith("root:$6$")
    assert _files_holding(tree, PASSWORD.encode(), skip={tree / "srv/sparse"}) == []


def test_the_release_holds_no_secret(release: tuple[Path, Built]) -> None:
    directory, built = release
    assert built.leaks == {} and not built.mkosi_had_it  # the password came from the matrix file
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["cells"][0]["status"] == "success"
    assert manifest["cells"][0]["settings"]["Password"] == "(set)"
    logs = directory.with_name("release.logs")
    for path in [*directory.iterdir(), *logs.iterdir()]:
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert sorted(p.name for p in logs.iterdir()) == ["directory.log"]


def _files_holding(tree: Path, needle: bytes, skip: set[Path]) -> list[Path]:
    found = []
    for directory, _, names in os.walk(tree):
        for name in names:
            path = Path(directory, name)
            if path not in skip and path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
    return found


@pytest.fixture(scope="module")
def luks_build(module_dir: ModuleDir, cache: Path) -> tuple[Path, Built]:
    project = module_dir("hostile-luks")
    (project / "mkosi.passphrase").write_text(PASSPHRASE + "\n")
    (project / "mkosi.passphrase").chmod(0o600)
    options = ("-t", "raw_gpt", "--encrypt=all", "--key-derivation=pbkdf2", "--key-derivation-time=10")
    return project / "luks.raw", _build(project, cache, *options, "-o", "luks.raw", secrets=[PASSPHRASE])


def test_the_luks_passphrase_shows_nowhere(luks_build: tuple[Path, Built]) -> None:
    image, built = luks_build
    assert "cryptsetup" in built.commands  # seen while it had the passphrase on its standard input
    assert built.leaks == {}
    log = image.with_name("luks.raw.log").read_bytes()
    assert b"cryptsetup reencrypt" in log and PASSPHRASE.encode() not in log
    assert PASSPHRASE not in built.result.stdout + built.result.stderr
    with image.open("rb") as f:
        previous = b""
        while chunk := f.read(1024**2):
            assert PASSPHRASE.encode() not in previous[-64:] + chunk
            previous = chunk


# ---- scripts ----


class _Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    connections = 0


class _Count(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, _Listener)
        self.server.connections += 1


@pytest.fixture(scope="module")
def listener() -> Iterator[_Listener]:
    """A server on the host's loopback only, counting who reaches it."""
    server = _Listener(("127.0.0.1", 0), _Count)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# Each attempt writes "reached" or "refused" to $OUT/<attempt>; $OUT/dev lists /dev. @PORT@ is the
# listener's, @HOST@ the host directory.
PROBES = r"""
try() { name=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo reached; else echo refused; fi > "$OUT/$name"; }
mkdir -p "$OUT"
try network bash -c 'exec 3<>/dev/tcp/127.0.0.1/@PORT@ && echo hello >&3'
ls -A /dev > "$OUT/dev"
try vda sh -c ': < /dev/vda'
try loop0 sh -c ': < /dev/loop0'
try mknod sh -c 'rm -f /var/tmp/loop0 && mknod /var/tmp/loop0 b 7 0'
try host-path sh -c 'mkdir -p @HOST@/written && echo x > @HOST@/written/marker && test -s @HOST@/written/marker'
try tmp sh -c 'echo x > /tmp/mkosi-hostile-marker'
# A fresh /proc has a writable /proc/sys: the host's core_pattern runs a program on the host.
# Opened for appending only, nothing is written even where the open succeeds.
try core-pattern sh -c 'mkdir -p /var/tmp/p && mount -t proc proc /var/tmp/p && : >> /var/tmp/p/sys/kernel/core_pattern'
"""

BUILD_SCRIPT = """#!/bin/bash
OUT="$DESTDIR/usr/share/probe/build"
@PROBES@
# What mkosi.postinst found in the build image, into the final image too.
cp -a /usr/share/probe/postinst-build "$DESTDIR/usr/share/probe/"
"""

POSTINST = """#!/bin/bash
OUT="/usr/share/probe/postinst-$1"
@PROBES@
if [ "$1" = final ]; then
    # Links where mkosi writes or cleans after this script.
    ln -sf @HOST@/postinst-target /etc/machine-id
    rm -rf /usr/share/doc && ln -s @HOST@/docs /usr/share/doc
fi
"""


@pytest.fixture(scope="module")
def script_project(module_dir: ModuleDir, host: Path, listener: _Listener) -> Path:
    project = module_dir("hostile-scripts")
    probes = PROBES.replace("@PORT@", str(listener.server_address[1]))
    for name, text in (("mkosi.build", BUILD_SCRIPT), ("mkosi.postinst", POSTINST)):
        (project / name).write_text(text.replace("@PROBES@", probes).replace("@HOST@", str(host)))
        (project / name).chmod(0o755)
    return project


PHASES = ("build", "postinst-build", "postinst-final")


@dataclass
class Probed:
    """What the scripts found in one build: each phase's attempts, and its listing of /dev."""

    attempts: dict[str, dict[str, str]]
    devices: dict[str, set[str]]
    connections: int  # how many reached the listener
    machine_id: tarfile.TarInfo


def _probe(project: Path, cache: Path, listener: _Listener, name: str, *args: str) -> Probed:
    before = listener.connections
    _build(project, cache, "-t", "tar", "-o", f"{name}.tar", *args)
    attempts: dict[str, dict[str, str]] = {phase: {} for phase in PHASES}
    devices: dict[str, set[str]] = {}
    with tarfile.open(project / f"{name}.tar") as tar:
        for member in tar:
            phase, _, attempt = member.name.removeprefix("./usr/share/probe/").partition("/")
            if phase in PHASES and attempt and member.isfile():
                content = tar.extractfile(member)
                assert content is not None
                text = content.read().decode()
                if attempt == "dev":
                    devices[phase] = set(text.split())
                else:
                    attempts[phase][attempt] = text.strip()
        machine_id = tar.getmember("./etc/machine-id")
    return Probed(attempts, devices, listener.connections - before, machine_id)


@pytest.fixture(scope="module")
def offline(script_project: Path, cache: Path, listener: _Listener) -> Probed:
    return _probe(script_project, cache, listener, "offline")


@pytest.fixture(scope="module")
def online(script_project: Path, cache: Path, listener: _Listener, offline: Probed) -> Probed:
    return _probe(script_project, cache, listener, "online", "--with-network")


# What systemd-nspawn gives every container: the standard devices, a terminal, and tun, which only
# makes interfaces in the container's own network namespace (or none: no CAP_NET_ADMIN with the
# host's network).
STANDARD_DEVICES = {
    "char", "console", "fd", "full", "mqueue", "net", "null", "ptmx", "pts", "random", "shm",
    "stderr", "stdin", "stdout", "tty", "urandom", "zero",
}  # fmt: skip


def test_scripts_reach_the_hosts_network_only_with_network(offline: Probed, online: Probed) -> None:
    assert offline.connections == 0 and {offline.attempts[p]["network"] for p in PHASES} == {"refused"}
    assert online.connections == len(PHASES) and {online.attempts[p]["network"] for p in PHASES} == {"reached"}


@pytest.mark.parametrize("phase", PHASES)
def test_scripts_get_no_host_device_and_cannot_write_outside(
    offline: Probed, online: Probed, host: Path, phase: str
) -> None:
    for probed in (offline, online):
        assert {k: v for k, v in probed.attempts[phase].items() if k != "network"} == {
            "vda": "refused", "loop0": "refused", "mknod": "refused", "core-pattern": "refused",
            # Both succeed inside the image, which is thrown away or ships them; the host sees neither.
            "host-path": "reached", "tmp": "reached",
        }  # fmt: skip
        assert probed.devices[phase] <= STANDARD_DEVICES
    _host_untouched(host)
    assert not Path("/tmp/mkosi-hostile-marker").exists()


def test_links_scripts_leave_are_never_followed_to_the_host(offline: Probed, host: Path) -> None:
    _host_untouched(host)  # mkosi.postinst linked etc/machine-id and usr/share/doc to the host's
    assert offline.machine_id.isfile() and offline.machine_id.size == 0


def _script(project: Path, name: str, text: str) -> str:
    (project / name).write_text(text)
    (project / name).chmod(0o755)
    return name


def test_a_destdir_replaced_by_a_link_is_refused(script_project: Path, cache: Path, host: Path) -> None:
    script = _script(
        script_project, "link-destdir.sh", f'#!/bin/sh\nrm -rf "$DESTDIR" && ln -s {host}/docs "$DESTDIR"\n'
    )
    built = _build(script_project, cache, f"--build-script={script}", "-t", "tar", "-o", "linked.tar", check=False)
    assert built.result.returncode == 1
    assert built.result.stderr.strip().splitlines()[-1] == (
        "mkosi: link-destdir.sh replaced $DESTDIR (/root/dest) with something that is not a directory"
    )
    assert not (script_project / "linked.tar").exists()
    _host_untouched(host)  # neither moved into the image nor removed with the build's output


def test_a_link_the_build_images_postinst_makes_is_followed_inside_it(
    script_project: Path, cache: Path, host: Path
) -> None:
    # /root of the build image as a link to the host's directory, where mkosi puts the sources and
    # the build script next: they go where the link leads inside the build image. There nspawn has
    # its own /tmp, so the script is not found and the build fails; the host's directory gets nothing.
    postinst = _script(script_project, "link-root.sh", f"#!/bin/sh\nrm -rf /root && ln -s {host} /root\n")
    built = _build(script_project, cache, f"--postinst-script={postinst}", "-t", "tar", "-o", "rooted.tar", check=False)
    assert built.result.returncode == 1 and "mkosi.build failed" in built.result.stderr
    _host_untouched(host)
