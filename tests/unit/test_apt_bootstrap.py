"""The apt and dpkg bootstrap's own parts: the host apt's configuration, the tree's skeleton, apt's
record of dependencies, and unpacking a .deb while keeping an uncompressed copy for dpkg."""

from __future__ import annotations

import io
import lzma
import subprocess
import tarfile
from pathlib import Path

import anyio
import pytest

from mkosi.architecture import Architecture
from mkosi.package_managers import RETRIES, DamagedDownload, apt, apt_bootstrap, deb, dpkg_order
from mkosi.package_managers.apt_bootstrap import Bootstrap, Source
from mkosi.run import CommandError


def test_host_apt_sees_only_the_tree_and_our_keys(tmp_path: Path) -> None:
    config = apt_bootstrap.host_apt_config(tmp_path / "root", tmp_path / "scratch", "amd64", 60)
    assert f'Dir "{tmp_path}/root/";' in config.splitlines()
    assert f'Dir::State::Status "{tmp_path}/root/var/lib/dpkg/status";' in config.splitlines()
    assert f'Dir::Etc::TrustedParts "{tmp_path}/scratch/trusted.gpg.d";' in config.splitlines()
    assert 'APT::Architectures "amd64";' in config.splitlines()
    # apt's binary caches are the build's, shared by its apt-get runs, never the image's.
    assert f'Dir::Cache::pkgcache "{tmp_path}/scratch/pkgcache.bin";' in config.splitlines()


def test_host_apt_gives_up_on_a_stalled_mirror_and_retries_a_few_times(tmp_path: Path) -> None:
    lines = apt_bootstrap.host_apt_config(tmp_path / "root", tmp_path / "scratch", "amd64", 7).splitlines()
    assert 'Acquire::http::Timeout "7";' in lines and 'Acquire::https::Timeout "7";' in lines
    assert f'Acquire::Retries "{RETRIES}";' in lines and 0 < RETRIES <= 3
    # A package list that did not come is an error, not a warning followed by "no package apt".
    assert 'APT::Update::Error-Mode "any";' in lines
    # apt in an existing tree gets the same limits on its command line.
    command = apt.apt_get(7)
    assert "-o Acquire::http::Timeout=7 -o Acquire::https::Timeout=7" in command
    assert f"-o Acquire::Retries={RETRIES} -o APT::Update::Error-Mode=any" in command


LESS = "http://127.0.0.1:8000/debian/pool/main/l/less/less_590-2.1%7edeb12u2_amd64.deb"
UNQUOTED = "http://127.0.0.1:8000/debian/pool/main/l/less/less_590-2.1~deb12u2_amd64.deb"


def _fetch_error(*lines: str) -> CommandError:
    return CommandError(["apt-get", "install"], 100, ["Get:15 http://127.0.0.1:8000/debian less", *lines])


@pytest.mark.parametrize(
    ("reason", "what", "tries"),
    [
        ("Connection timed out", "the mirror sent nothing for 7 s (MirrorTimeout=7)", 3),
        ("Could not connect to 127.0.0.1:8000 (127.0.0.1), connection timed out", "the mirror sent nothing for 7 s", 3),
        ("Error reading from server - read (104: Connection reset by peer)", "the mirror reset the connection", 3),
        (
            "Error reading from server. Remote end closed connection",
            "the mirror closed the connection before the end of the file",
            3,
        ),
        (
            "Could not connect to 127.0.0.1:8000 (127.0.0.1). - connect (111: Connection refused)",
            "could not connect to the mirror",
            3,
        ),
        (
            "File has unexpected size (66022 != 132044). Mirror sync in progress?",
            "the mirror sent 66022 bytes of 132044",
            1,
        ),
        ("Hash Sum mismatch", "the file has another SHA-256 than the package index names", 1),
        ("Something new", "apt could not fetch it", 1),
    ],
)
def test_a_failed_fetch_is_one_line_naming_the_file_and_what_happened(reason: str, what: str, tries: int) -> None:
    failure = apt_bootstrap.download_failure(
        _fetch_error(f"E: Failed to fetch {LESS}  {reason} [IP: 127.0.0.1 8000]", "   Hashes of expected file:"), 7
    )
    assert failure is not None
    assert str(failure).startswith(f"could not download {UNQUOTED}: {what}")
    assert str(failure).endswith(f" (apt: {reason})")
    assert ("after 3 tries" in str(failure)) == (tries == 3)
    assert "\n" not in str(failure)
    # A file that came whole but damaged is worth another request; apt has retried the others.
    assert isinstance(failure, DamagedDownload) == ("bytes of" in what or "SHA-256" in what)


def test_a_failed_fetch_names_the_first_file_and_counts_the_others() -> None:
    other = "http://127.0.0.1:8000/debian/pool/main/g/gzip/gzip_1.12-1_amd64.deb"
    failure = apt_bootstrap.download_failure(
        _fetch_error(
            f"E: Failed to fetch {LESS}  Hash Sum mismatch",
            f"E: Failed to fetch {other}  Hash Sum mismatch",
            f"E: Failed to fetch {other}  Hash Sum mismatch",
            "E: Some files failed to download",
        ),
        60,
    )
    assert failure is not None and failure.url == UNQUOTED and failure.others == 1
    assert ", and 1 more file (see the log) (apt: Hash Sum mismatch)" in str(failure)
    # The package lists `update` fetches fail with a warning.
    lists = apt_bootstrap.download_failure(
        _fetch_error("W: Failed to fetch http://m/debian/dists/bookworm/InRelease  Connection timed out"), 60
    )
    assert lists is not None and lists.url == "http://m/debian/dists/bookworm/InRelease"
    # Anything else apt fails at is left to the other checks.
    assert apt_bootstrap.download_failure(_fetch_error("E: Unable to locate package nothing"), 60) is None


def test_skeleton_merges_usr_and_writes_sources(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bootstrap = Bootstrap(
        sources=(Source("http://m/debian", "bookworm", ("main",)),),
        packages=(),
        keyrings=(),
        files={"etc/dpkg/dpkg.cfg.d/x": "path-exclude=/usr/share/doc/*\n"},
    )
    apt_bootstrap.make_skeleton(root, bootstrap, Architecture.x86_64)
    assert {p.name: str(p.readlink()) for p in root.iterdir() if p.is_symlink()} == {
        "bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
    }  # fmt: skip
    assert (root / "etc/apt/sources.list").read_text() == "deb [trusted=yes] http://m/debian bookworm main\n"
    assert (root / "var/lib/dpkg/status").read_text() == ""
    assert (root / "etc/dpkg/dpkg.cfg.d/x").read_text().startswith("path-exclude=")
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_requested_names_drop_versions_suites_and_architectures() -> None:
    names = apt_bootstrap.requested_names(("a=1.0", "b/bookworm-backports", "c:amd64", "d", "?essential"))
    assert names == {"a", "b", "c", "d"}


STATUS = """Package: base
Essential: yes
Priority: required
Pre-Depends: libc (>= 2)
Depends: awk | mawk
Architecture: amd64

Package: libc
Priority: optional
Architecture: amd64

Package: mawk
Provides: awk
Priority: optional
Architecture: amd64

Package: passwd
Priority: required
Depends: libsemanage
Architecture: amd64

Package: libsemanage
Priority: optional
Architecture: amd64

Package: systemd
Priority: important
Depends: libsystemd-shared (= 1)
Architecture: amd64

Package: libsystemd-shared
Priority: optional
Architecture: amd64
"""


def test_dependencies_are_marked_as_debootstrap_leaves_them(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/apt").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    # Not marked: the essential package and its dependencies (through a virtual package too), the
    # required package, what was asked for. Marked: the dependencies of the last two.
    assert dpkg_order.mark_dependencies(tmp_path, {"systemd"}, "amd64") == 2
    states = (tmp_path / "var/lib/apt/extended_states").read_text()
    assert states == (
        "Package: libsemanage\nArchitecture: amd64\nAuto-Installed: 1\n\n"
        "Package: libsystemd-shared\nArchitecture: amd64\nAuto-Installed: 1\n\n"
    )


def build_package(tmp_path: Path, compression: str) -> Path:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: hello\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    )
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (tree / "usr/bin/hello").chmod(0o755)
    (tree / "usr/share/doc/hello").mkdir(parents=True)
    (tree / "usr/share/doc/hello/README").write_text("docs\n")
    package = tmp_path / f"hello-{compression}.deb"
    subprocess.run(["dpkg-deb", f"-Z{compression}", "--root-owner-group", "--build", tree, package],
                   check=True, capture_output=True)  # fmt: skip
    return package


@pytest.mark.parametrize(("compression", "suffix"), [("xz", "xz"), ("zstd", "zst"), ("gzip", "gz")])
def test_unpack_fills_the_tree_and_keeps_an_uncompressed_package(tmp_path: Path, compression: str, suffix: str) -> None:
    package = build_package(tmp_path, compression)
    root, copy = tmp_path / "root", tmp_path / "copy.deb"
    (root / "usr").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    anyio.run(deb.uncompressed_copy, package, copy, root, ("./usr/share/doc/*",))
    assert (root / "usr/bin/hello").read_text() == "#!/bin/sh\necho hello\n"
    assert (root / "bin").is_symlink()  # the merged-/usr link survives the package's ./usr/bin
    assert not (root / "usr/share/doc/hello/README").exists()
    # dpkg-deb reads the copy as the same package, its data member now plain tar.
    members = subprocess.run(["ar", "t", copy], capture_output=True, text=True, check=True).stdout.split()
    assert members == ["debian-binary", f"control.tar.{suffix}", "data.tar"]
    info = subprocess.run(["dpkg-deb", "--field", copy, "Package"], capture_output=True, text=True, check=True)
    assert info.stdout.strip() == "hello"
    listing = subprocess.run(["dpkg-deb", "--contents", copy], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/hello" in listing and "./usr/share/doc/hello/README" in listing


def test_a_file_that_is_no_package_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"not an ar archive")
    with pytest.raises(deb.BrokenPackage, match=r"bogus\.deb is not a Debian package"):
        anyio.run(deb.uncompressed_copy, bogus, tmp_path / "copy.deb", tmp_path)
    truncated = tmp_path / "truncated.deb"
    truncated.write_bytes(deb.AR_MAGIC + deb.ar_header("debian-binary", 4) + b"2.0\n")
    with pytest.raises(deb.BrokenPackage, match=r"no data\.tar member"):
        deb.members_before_data(truncated)


def test_a_corrupt_package_fails_the_unpack(tmp_path: Path) -> None:
    package = build_package(tmp_path, "xz")
    data = bytearray(package.read_bytes())
    data[-200:-100] = bytes(100)  # inside the xz stream of data.tar.xz
    package.write_bytes(bytes(data))
    (tmp_path / "root").mkdir()
    with pytest.raises(CommandError) as failure:
        anyio.run(deb.uncompressed_copy, package, tmp_path / "copy.deb", tmp_path / "root")
    assert any(line.startswith("dpkg-deb") for line in failure.value.tail), failure.value.tail


def test_install_steps_put_pre_dependencies_first() -> None:
    packages = {
        "base": {"Essential": "yes", "Depends": "libc"},
        "libc": {"Priority": "optional"},
        "libsystemd-shared": {"Depends": "libc"},
        "systemd": {"Pre-Depends": "libsystemd-shared (= 1), libc", "Depends": "mount"},
        "mount": {},
        "systemd-sysv": {"Depends": "systemd"},
        "less": {"Depends": "libc"},
    }
    steps = dpkg_order.install_steps(packages)
    # The base system as one forced run; then what is pre-depended on; then all the rest at once.
    assert [(s.packages, s.force_depends) for s in steps] == [
        (("base", "libc"), True),
        (("libsystemd-shared",), False),
        (("less", "mount", "systemd", "systemd-sysv"), False),
    ]


def test_the_kernel_goes_last_with_what_only_it_needs() -> None:
    packages = {
        "base": {"Essential": "yes"},
        "dracut": {"Provides": "linux-initramfs-tool", "Depends": "base"},
        "systemd": {},
        "linux-image-amd64": {"Depends": "linux-image-6.1"},
        "linux-image-6.1": {"Depends": "kmod, linux-base, initramfs-tools | linux-initramfs-tool"},
        "linux-base": {},
        "kmod": {},
        "udev": {"Depends": "kmod"},
    }
    asked = ["dracut", "systemd", "udev", "linux-image-amd64"]
    steps = dpkg_order.install_steps(packages, last=["linux-image-amd64"], asked=asked)
    assert [(s.packages, s.force_depends) for s in steps] == [
        (("base",), True),
        (("dracut", "kmod", "systemd", "udev"), False),  # kmod: udev needs it too
        (("linux-base", "linux-image-6.1", "linux-image-amd64"), False),
    ]
    # A package something else depends on is not held back.
    packages["systemd"] = {"Depends": "linux-image-amd64"}
    steps = dpkg_order.install_steps(packages, last=["linux-image-amd64"], asked=asked)
    assert len(steps) == 2 and "linux-image-6.1" in steps[1].packages


def test_a_pre_dependency_circle_is_installed_like_the_base_system() -> None:
    packages = {"a": {"Pre-Depends": "b"}, "b": {"Pre-Depends": "a"}, "c": {}}
    steps = dpkg_order.install_steps(packages)
    assert [(s.packages, s.force_depends) for s in steps] == [(("a", "b", "c"), True)]


def test_control_fields_with_continuation_lines() -> None:
    fields = deb.parse_fields("Package: x\nDepends: a,\n b (>= 1)\nDescription: short\n long text\n")
    assert fields["Depends"] == "a,\nb (>= 1)"
    assert dpkg_order.relations(fields, "Depends") == ["a", "b"]
    assert dpkg_order.relations({"Depends": "awk | mawk:any (>= 1), c"}, "Depends") == ["awk", "mawk", "c"]


def test_a_copy_without_a_tree_is_the_same_package(tmp_path: Path) -> None:
    package = build_package(tmp_path, "xz")
    copy = tmp_path / "copy.deb"
    anyio.run(deb.uncompressed_copy, package, copy)
    listing = subprocess.run(["dpkg-deb", "--contents", copy], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/hello" in listing
    fields = anyio.run(deb.control_fields, copy)
    assert fields["Package"] == "hello" and fields["Version"] == "1"


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_control_fields_are_those_dpkg_deb_reads(tmp_path: Path, compression: str) -> None:
    package = build_package(tmp_path, compression)
    fields = anyio.run(deb.control_fields, package)
    shown = subprocess.run(["dpkg-deb", "--field", package], capture_output=True, text=True, check=True).stdout
    assert fields == deb.parse_fields(shown)
    assert fields["Package"] == "hello" and fields["Architecture"] == "all"


def test_a_corrupt_control_member_is_refused(tmp_path: Path) -> None:
    package = build_package(tmp_path, "xz")
    data = bytearray(package.read_bytes())
    start = data.index(b"control.tar.xz") + deb.AR_HEADER_SIZE
    data[start + 20 : start + 60] = bytes(40)  # inside the xz stream of control.tar.xz
    package.write_bytes(bytes(data))
    with pytest.raises(deb.BrokenPackage, match=r"hello-xz\.deb: unreadable control member control\.tar\.xz"):
        anyio.run(deb.control_fields, package)


def test_print_uris_give_files_and_checksums(tmp_path: Path) -> None:
    listing = (
        "'http://m/debian/pool/main/l/less/less_590-2_amd64.deb' less_590-2_amd64.deb 131736 SHA256:abc123\n"
        # Debian's security archive lists no MD5 sums: without ForceHash apt prints no checksum at all.
        "'http://m/debian-security/pool/apt_2.6.2_amd64.deb' apt_2.6.2_amd64.deb 1373116 \n"
        "'file:/srv/mirror/pool/main/h/hello/hello_1%2b2_all.deb' hello_1+2_all.deb 816 SHA256:def456\n"
        "some other line\n"
    )
    files, wanted = apt_bootstrap.parse_print_uris(listing, tmp_path)
    assert files == [tmp_path / "less_590-2_amd64.deb", tmp_path / "apt_2.6.2_amd64.deb",
                     Path("/srv/mirror/pool/main/h/hello/hello_1+2_all.deb")]  # fmt: skip
    assert wanted == {"less_590-2_amd64.deb": "abc123", "apt_2.6.2_amd64.deb": ""}


def test_a_dpkg_failure_names_the_packages_dpkg_names() -> None:
    tail = ["dpkg: error processing package foo (--install):", " subprocess returned error exit status 1",
            "dpkg: error processing package bar (--install):", "Errors were encountered while processing:"]  # fmt: skip
    error = apt_bootstrap.dpkg_failure(CommandError(["unshare", "sh", "-c", "long script"], 1, tail))
    assert str(error).startswith("dpkg in the tree could not install bar, foo (exit status 1), last output:\n    dpkg:")
    assert "long script" not in str(error)
    unnamed = apt_bootstrap.dpkg_failure(CommandError(["unshare"], 2, ["dpkg: error: out of space"]))
    assert str(unnamed) == "dpkg in the tree failed (exit status 2), last output:\n    dpkg: error: out of space"


def test_a_control_member_without_a_control_file_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("./md5sums")
        archive.addfile(info, io.BytesIO(b""))
    control = lzma.compress(buffer.getvalue())
    package = tmp_path / "nocontrol.deb"
    package.write_bytes(
        deb.AR_MAGIC + deb.ar_header("debian-binary", 4) + b"2.0\n"
        + deb.ar_header("control.tar.xz", len(control)) + control + b"\n" * (len(control) % 2)
        + deb.ar_header("data.tar", 0)
    )  # fmt: skip
    with pytest.raises(deb.BrokenPackage, match=r"nocontrol\.deb: its control member .* holds no control"):
        deb.read_control_file(package)
