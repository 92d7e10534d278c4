"""Matrix files: expansion with include/exclude, names, validation through the settings table."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from matrix.command import matrix_arguments
from matrix.runner import keys_to_keep, listing, plan, sharers, start_order
from matrix.spec import Matrix, expand, load_matrix, parse_matrix, select
from mkosi.config import Compression, OutputFormat
from mkosi.errors import ConfigError


def _matrix(tmp_path: Path, text: str) -> Matrix:
    return parse_matrix(text, tmp_path / "mkosi.matrix", tmp_path)


def test_product_in_axis_order() -> None:
    cells = expand({"Release": ["bookworm", "trixie"], "Format": ["directory", "tar"]}, [], [])
    assert [c.name for c in cells] == ["bookworm-directory", "bookworm-tar", "trixie-directory", "trixie-tar"]


def test_exclude_drops_partial_matches() -> None:
    cells = expand(
        {"Release": ["bookworm", "trixie"], "Format": ["directory", "tar"], "Verity": [False, True]},
        [],
        [{"Format": "directory", "Verity": True}, {"Release": "trixie", "Format": "tar"}],
    )
    assert [c.name for c in cells] == [
        "bookworm-directory",
        "bookworm-tar",
        "bookworm-tar-verity",
        "trixie-directory",
    ]


def test_include_extends_matching_cells_or_adds_one() -> None:
    cells = expand(
        {"Release": ["bookworm", "trixie"], "Format": ["tar"]},
        [
            {"Release": "trixie", "Hostname": "new"},  # extends trixie-tar
            {"Release": "sid", "Format": "directory"},  # matches nothing: a new cell
            {"Format": "tar", "Release": "bookworm", "Compress": "xz"},
        ],
        [],
    )
    by_name = {c.name: c.settings for c in cells}
    assert list(by_name) == ["bookworm-tar-xz", "trixie-tar-new", "sid-directory"]
    assert by_name["trixie-tar-new"] == {"Release": "trixie", "Format": "tar", "Hostname": "new"}


def test_include_never_changes_an_axis_value() -> None:
    cells = expand({"Format": ["tar"]}, [{"Format": "directory", "Hostname": "x"}], [])
    assert [c.settings for c in cells] == [{"Format": "tar"}, {"Format": "directory", "Hostname": "x"}]


def test_names_must_be_unique() -> None:
    with pytest.raises(ConfigError, match="two cells would be named"):
        expand({"Hostname": ["a b", "a_b"]}, [], [])


def test_unknown_keys_and_tables_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[matrix\]: Fromat: unknown key, did you mean Format"):
        _matrix(tmp_path, '[matrix]\nFromat = ["tar"]\n')
    with pytest.raises(ConfigError, match="unknown table"):
        _matrix(tmp_path, "[matrx]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        _matrix(tmp_path, "[matrix\n")
    with pytest.raises(ConfigError, match="Compress: must be none, xz or zstd"):
        _matrix(tmp_path, '[release]\nCompress = "lz4"\n')


def test_release_table(tmp_path: Path) -> None:
    text = '[matrix]\nFormat=["tar"]\n[release]\nDirectory="out"\nSign=true\nKey="k"\nCompress="xz"\n'
    m = _matrix(tmp_path, text)
    assert m.release.directory == tmp_path / "out"
    assert (m.release.sign, m.release.key, m.release.compress) == (True, "k", Compression.xz)


def test_the_release_epoch_is_every_cells_unless_one_sets_its_own(tmp_path: Path) -> None:
    text = '[matrix]\nFormat=["tar", "directory"]\n[[include]]\nFormat="directory"\nSourceDateEpoch=1\n'
    m = _matrix(tmp_path, text + "[release]\nSourceDateEpoch = 1700000000\n")
    assert m.release.source_date_epoch == 1_700_000_000
    epochs = {p.name: p.config.source_date_epoch for p in plan(m, tmp_path, m.cells, tmp_path / "build")}
    assert epochs == {"tar": 1_700_000_000, "directory-1": 1}
    assert _matrix(tmp_path, text).release.source_date_epoch is None
    for bad in ("true", '"soon"', "-1"):
        with pytest.raises(ConfigError, match=r"\[release\].*SourceDateEpoch: invalid epoch"):
            _matrix(tmp_path, f"[release]\nSourceDateEpoch = {bad}\n")


def test_select_by_pattern() -> None:
    cells = expand({"Release": ["bookworm", "trixie"], "Format": ["directory", "tar"]}, [], [])
    assert [c.name for c in select(cells, ["*-tar"])] == ["bookworm-tar", "trixie-tar"]
    with pytest.raises(ConfigError, match="no cell matches"):
        select(cells, ["nope"])


MATRIX = """
[matrix]
Distribution = ["debian"]
Release = ["bookworm", "trixie"]
Format = ["directory", "tar"]
[[include]]
Release = "bookworm"
Format = "tar"
Hostname = "other"
[defaults]
Packages = ["less", "vim-tiny"]
[release]
Compress = "zstd"
"""


def test_plan_builds_configs_through_the_settings_table(tmp_path: Path) -> None:
    (tmp_path / "mkosi.default").write_text("[Output]\nHostname=base\n")
    m = _matrix(tmp_path, MATRIX)
    planned = plan(m, tmp_path, m.cells, tmp_path / "work")
    configs = {p.name: p.config for p in planned}
    tar = configs["debian-bookworm-tar-other"]
    assert tar.format is OutputFormat.tar and tar.compress is Compression.zstd
    assert tar.packages == ("less", "vim-tiny")
    assert tar.hostname == "other"
    assert configs["debian-bookworm-directory"].hostname == "base"
    # A directory cell is published as a tarball, so it is built as one.
    tree = configs["debian-bookworm-directory"]
    assert tree.format is OutputFormat.tar and tree.compress is Compression.zstd
    assert tree.output == tmp_path / "work/debian-bookworm-directory/debian-bookworm-directory.tar.zst"
    assert tar.output == tmp_path / "work/debian-bookworm-tar-other/debian-bookworm-tar-other.tar.zst"


def test_sharing_and_what_to_keep(tmp_path: Path) -> None:
    m = _matrix(tmp_path, MATRIX)
    planned = plan(m, tmp_path, m.cells, tmp_path / "work")
    share = sharers(planned)
    keys = {p.name: dict((s, k) for s, k, _ in p.keys) for p in planned}
    bookworm_dir, bookworm_tar = keys["debian-bookworm-directory"], keys["debian-bookworm-tar-other"]
    assert bookworm_dir["bootstrap"] == bookworm_tar["bootstrap"]
    assert bookworm_dir["configure"] != bookworm_tar["configure"]  # the hostname differs
    trixie_dir = keys["debian-trixie-directory"]
    assert share[trixie_dir["clean"]] == ["debian-trixie-directory", "debian-trixie-tar"]
    # Bookworm's cells share only the bootstrap; trixie's share everything up to clean.
    assert keys_to_keep(planned) == {bookworm_dir["bootstrap"], trixie_dir["clean"]}
    assert "shared with debian-bookworm-tar-other" in listing(planned)
    assert [p.name for p in start_order(planned)] == [
        "debian-bookworm-directory",
        "debian-trixie-directory",
        "debian-bookworm-tar-other",
        "debian-trixie-tar",
    ]


def test_invalid_cells_are_all_reported_before_anything_runs(tmp_path: Path) -> None:
    m = _matrix(tmp_path, '[matrix]\nFormat = ["tar", "directory"]\nVerity = [true]\nRelease=["bookworm"]\n')
    with pytest.raises(ConfigError) as error:
        plan(m, tmp_path, m.cells, tmp_path / "work")
    message = str(error.value)
    assert "cell tar-verity-bookworm: Verity: only supported with raw formats" in message
    assert "cell directory-verity-bookworm: Verity" in message
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["matrix", "--list"], ["--list"]),
        (["-C", "proj", "matrix", "--jobs", "2"], ["-C", "proj", "--jobs", "2"]),
        (["--directory=proj", "matrix"], ["--directory=proj"]),
        (["-Cproj", "matrix"], ["-Cproj"]),
        (["-o", "matrix", "build"], None),
        (["build"], None),
        ([], None),
    ],
)
def test_matrix_verb_is_recognised_after_the_project_directory(argv: list[str], expected: list[str] | None) -> None:
    assert matrix_arguments(argv) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[matrix]\nFormat = ["tar"]\n[[exclude]]\nFormat = "tar"\n', "[[exclude]] removes every cell of [matrix]"),
        ('[matrix]\n[defaults]\nFormat = "tar"\n', "no cells: [matrix] has no axes and no [[include]] adds a cell"),
        ("", "no cells"),
    ],
)
def test_a_matrix_with_nothing_to_build_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        _matrix(tmp_path, text)


def test_a_matrix_of_billions_of_cells_is_refused_at_once(tmp_path: Path) -> None:
    many = ", ".join(f'"h{i}"' for i in range(1000))
    text = f"[matrix]\nHostname = [{many}]\nRelease = [{many}]\nSeed = [{many}]\n"
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"multiplies out to 1,000,000,000 cells \(1000 Hostname x 1000 Release"):
        _matrix(tmp_path, text)
    assert time.monotonic() - started < 5, "refused before expanding anything"


def test_a_matrix_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "mkosi.matrix"
    path.write_bytes(b'[matrix]\nHostname = ["caf\xe9"]\n')
    with pytest.raises(ConfigError) as error:
        load_matrix(path, tmp_path)
    assert str(error.value) == f"{path}: line 2: byte 0xe9 is not UTF-8 (TOML is UTF-8 text)"


def test_cell_names_never_escape_the_release_directory() -> None:
    cells = expand({"Hostname": ["..", "../../etc/passwd", ".hidden"]}, [], [])
    assert [c.name for c in cells] == ["hostname", "etc_passwd", "hidden"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[defaults]\nOutput = "../../etc/passwd"\n',
            "[defaults]: Output: cannot be set in a matrix: the matrix names",
        ),
        ("[[include]]\nForce = 2\n", "[[include]][0]: Force: cannot be set in a matrix: every cell builds"),
        ('[matrix]\nOutput = ["a", "b"]\n', "[matrix]: Output: cannot be set in a matrix"),
        ('[matrix]\nPassword = ["a", "b"]\n', "[matrix]: Password: a secret cannot be an axis: its values would name"),
    ],
)
def test_settings_the_matrix_decides_or_that_would_name_cells_are_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _matrix(tmp_path, text)
    assert str(error.value).startswith(f"{tmp_path / 'mkosi.matrix'}: {problem}")


@pytest.mark.parametrize("directory", ["/", ".", "..", "sub/../..", "{project}", "{parent}"])
def test_a_release_directory_that_holds_the_project_is_refused(tmp_path: Path, directory: str) -> None:
    project = tmp_path / "project"
    value = directory.format(project=project, parent=tmp_path)
    text = f'[matrix]\nFormat = ["tar"]\n[release]\nDirectory = "{value}"\n'
    with pytest.raises(ConfigError) as error:
        parse_matrix(text, project / "mkosi.matrix", project)
    assert str(error.value).startswith(
        f"{project / 'mkosi.matrix'}: [release]: Directory: must not be the project directory or a directory above it"
    )
    beside = parse_matrix(text.replace(value, "../releases"), project / "mkosi.matrix", project)
    assert beside.release.directory == tmp_path / "releases"


def test_a_signed_release_refuses_a_gpg_home_others_can_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("GNUPGHOME", str(home))
    with pytest.raises(ConfigError) as error:
        _matrix(tmp_path, '[matrix]\nFormat = ["tar"]\n[release]\nSign = true\n')
    assert str(error.value) == (
        f"{tmp_path / 'mkosi.matrix'}: [release]: Sign: the gpg home {home} is accessible by group or others "
        "(mode 0755) (chmod 700 it)"
    )
    assert not _matrix(tmp_path, '[matrix]\nFormat = ["tar"]\n').release.sign  # only signing reads it


EXTENSION_MATRIX = """
[matrix]
Format = ["tar", "sysext"]
[[include]]
Format = "sysext"
BaseImage = "cell:tar"
[defaults]
Distribution = "debian"
Release = "bookworm"
[release]
Compress = "zstd"
"""


def test_a_cell_built_from_another_is_planned_after_it_and_reads_its_published_image(tmp_path: Path) -> None:
    m = _matrix(tmp_path, EXTENSION_MATRIX)
    assert {c.name: c.needs for c in m.cells} == {"tar": (), "sysext-cell_tar": ("tar",)}
    planned = plan(m, tmp_path, m.cells, tmp_path / "work/cells")
    configs = {p.name: p.config for p in planned}
    # Published into the release being assembled, compressed as the release says.
    assert configs["sysext-cell_tar"].base_image == tmp_path / "work/release/tar.tar.zst"
    assert configs["sysext-cell_tar"].format is OutputFormat.sysext
    assert configs["sysext-cell_tar"].output.name == "sysext-cell_tar.raw.zst"
    with pytest.raises(ConfigError, match="cell sysext-cell_tar is built from cell tar: select that cell too"):
        plan(m, tmp_path, select(m.cells, ["sysext*"]), tmp_path / "work/cells")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[matrix]\nFormat = ["sysext"]\nBaseImage = ["cell:tar"]\n', "names cell:tar, no cell of this matrix"),
        ('[matrix]\nFormat = ["tar", "sysext"]\n[defaults]\nBaseImage = "cell:tar"\n', "cell tar names itself"),
    ],
)
def test_cell_references_to_no_cell_or_to_itself_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        _matrix(tmp_path, text)


def test_signed_verity_and_the_boot_files_formats_are_axis_values(tmp_path: Path) -> None:
    (tmp_path / "mkosi.secure-boot.key").write_text("key")
    (tmp_path / "mkosi.secure-boot.key").chmod(0o600)
    (tmp_path / "mkosi.secure-boot.crt").write_text("crt")
    verity = '[matrix]\nVerity = ["no", "yes", "signed"]\n[defaults]\nFormat = "raw_squashfs"\n'
    m = _matrix(tmp_path, verity)
    configs = {p.name: p.config for p in plan(m, tmp_path, m.cells, tmp_path / "work")}
    assert [str(c.verity) for c in configs.values()] == ["no", "yes", "signed"]
    signed = next(c for c in configs.values() if c.signed_verity)
    assert signed.verity_key == tmp_path / "mkosi.secure-boot.key"
    m = _matrix(tmp_path, '[matrix]\nFormat = ["uki", "esp"]\n[release]\nCompress = "zstd"\n')
    boot_files = [p.config for p in plan(m, tmp_path, m.cells, tmp_path / "work")]
    assert [c.output.name for c in boot_files] == ["uki.efi.zst", "esp.raw.zst"]
    assert all(c.bootable for c in boot_files)


def test_the_remote_cache_comes_from_the_release_table(tmp_path: Path) -> None:
    cells = '[matrix]\nFormat = ["tar"]\n'
    m = _matrix(
        tmp_path, cells + '[release]\nRemoteCache = "oci://ghcr.io/example/stages"\nRemoteCacheInsecure = true\n'
    )
    assert str(m.release.remote_cache) == "oci://ghcr.io/example/stages" and m.release.remote_cache_insecure
    with pytest.raises(ConfigError, match=r"\[release\].*RemoteCache: invalid remote cache 'ghcr.io/x'"):
        _matrix(tmp_path, cells + '[release]\nRemoteCache = "ghcr.io/x"\n')
    with pytest.raises(ConfigError, match=r"RemoteCacheInsecure: must be true or false"):
        _matrix(tmp_path, cells + '[release]\nRemoteCache = "oci://h/x"\nRemoteCacheInsecure = "yes"\n')
