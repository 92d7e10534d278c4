"""The mkosi command as users run it: exit statuses, one-line errors, clean, summary, logs."""

from __future__ import annotations

import json
import logging
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import mkosi as mkosi_package
from mkosi import log, ownership
from tests.processes import packages_imported_by

# The `mkosi` command pyproject installs (matrix.command:entry), next to this interpreter.
INSTALLED_MKOSI = Path(sys.executable).parent / "mkosi"


def mkosi(tmp_path: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkosi", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60, input=stdin
    )


def test_config_error_is_one_line_with_status_2_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "mkosi.default").write_text("[Output]\nFormat=tarball\n")
    result = mkosi(tmp_path, "build")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "mkosi.default:2" in result.stderr and "Format" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mkosi.default"]


def test_a_password_on_the_command_line_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = mkosi(tmp_path, "-d", "debian", "-r", "trixie", "--password=hunter2", "-t", "directory", "build")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("mkosi: --password: a secret on the command line is visible")
    assert "hunter2" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_lists_flags(tmp_path: Path) -> None:
    result = mkosi(tmp_path, "help")
    assert result.returncode == 0
    for flag in ("--distribution", "--format", "--package", "--kernel-command-line", "--hostname"):
        assert flag in result.stdout


def test_summary_shows_settings_and_stages(tmp_path: Path) -> None:
    result = mkosi(tmp_path, "-d", "debian", "-r", "trixie", "--password", "-", "summary", stdin="hunter2\n")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ *Password: +\(set\)$", result.stdout, re.M)
    assert "trixie" in result.stdout
    assert "hunter2" not in result.stdout
    assert "bootstrap" in result.stdout and "Stages:" in result.stdout


def test_clean_removes_outputs_and_with_ff_the_package_pool(tmp_path: Path) -> None:
    (tmp_path / "image/etc").mkdir(parents=True)
    (tmp_path / "image.log").write_text("log")
    for published in ("image", "image.log"):
        ownership.mark(tmp_path / published, "image")
    (tmp_path / ".mkosi-tmp.image").mkdir()  # left by a build killed with SIGKILL
    pool = tmp_path / "mkosi.cache/debian~bookworm~x86-64"
    pool.mkdir(parents=True)
    (pool / "a_1_amd64.deb").write_text("")
    (tmp_path / "keep.txt").write_text("not ours")

    result = mkosi(tmp_path, "-d", "debian", "-r", "bookworm", "-t", "directory", "clean")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "mkosi.cache"]
    assert pool.exists()

    result = mkosi(tmp_path, "-d", "debian", "-r", "bookworm", "-ff", "clean")
    assert result.returncode == 0, result.stderr
    assert not pool.exists()
    assert (tmp_path / "keep.txt").exists()


def test_clean_refuses_to_remove_what_mkosi_did_not_publish(tmp_path: Path) -> None:
    # `Output=` naming a directory of the user's (a typo such as -o /usr): nothing is removed.
    (tmp_path / "mine/etc").mkdir(parents=True)
    (tmp_path / "mine.log").write_text("log")
    ownership.mark(tmp_path / "mine.log", "mine")
    result = mkosi(tmp_path, "-o", "mine", "-ff", "clean")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"{tmp_path}/mine was not made by mkosi" in result.stderr
    assert (tmp_path / "mine/etc").is_dir() and (tmp_path / "mine.log").exists()

    # Published by mkosi, but for another output.
    ownership.mark(tmp_path / "mine", "other")
    result = mkosi(tmp_path, "-o", "mine", "clean")
    assert result.returncode == 1
    assert "belongs to mkosi's output other, not to mine" in result.stderr
    assert (tmp_path / "mine/etc").is_dir()

    # A file this configuration does not publish (no --checksum) is left alone, whoever made it.
    ownership.mark(tmp_path / "mine", "mine")
    (tmp_path / "SHA256SUMS").write_text("the user's own")
    result = mkosi(tmp_path, "-o", "mine", "clean")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS"]


def test_ff_clean_empties_no_build_directory_or_cache_of_the_users(tmp_path: Path) -> None:
    # BuildDirectory=$HOME, Cache=/srv: directories that held the user's files before mkosi came.
    home, srv = tmp_path / "home", tmp_path / "srv"
    (home / "thesis.tex").parent.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (srv / "stages").mkdir(parents=True)
    (srv / "stages/site.html").write_text("the user's")
    args = ("-d", "debian", "-r", "bookworm", "-t", "directory", "-ff")
    for flag, directory in ((f"--build-dir={home}", home), (f"--cache={srv}", srv / "stages")):
        result = mkosi(tmp_path, *args, flag, "clean")
        assert result.returncode == 1 and result.stderr.count("\n") == 1
        assert (
            result.stderr == f"mkosi: {directory} was not made by mkosi (it has no user.mkosi.output attribute): "
            "empty it yourself, or name a directory of its own\n"
        )
    assert (home / "thesis.tex").exists() and (srv / "stages/site.html").exists()

    # One mkosi made (or found empty) is mkosi's to empty.
    (tmp_path / "builds").mkdir()
    ownership.claim_directory(tmp_path / "builds", ownership.BUILD_DIRECTORY)
    (tmp_path / "builds/main.o").write_text("object")
    assert mkosi(tmp_path, *args, "--build-dir=builds", "clean").returncode == 0
    assert list((tmp_path / "builds").iterdir()) == []
    ownership.claim_directory(home, ownership.BUILD_DIRECTORY)  # not empty: stays unmarked
    assert ownership.owner_of(home) is None


def test_an_output_naming_a_file_outside_the_project_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # Output=../../etc/passwd, with a stand-in for the host's file.
    project = tmp_path / "a/b"
    project.mkdir(parents=True)
    (project / "mkosi.default").write_text(
        "[Distribution]\nDistribution=debian\nRelease=bookworm\n[Output]\nFormat=tar\nOutput=../../passwd\n"
    )
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    for force in ([], ["-f"], ["-ff"]):
        result = mkosi(project, *force, "build")
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"mkosi: {tmp_path}/passwd was not made by mkosi (it has no {ownership.ATTRIBUTE} attribute): "
            "remove it yourself or choose another output\n"
        )
    assert (tmp_path / "passwd").read_text() == "root:x:0:0::/root:/bin/sh\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "passwd"]
    assert sorted(p.name for p in project.iterdir()) == ["mkosi.default"]


def test_build_log_file_and_json_console(tmp_path: Path, capsys: object) -> None:
    log.setup(json=True, verbose=0)
    with log.build_log("demo", tmp_path / "demo.log") as logger:
        logger.info("bootstrap: done", seconds=1.5)
        logger.debug("subprocess line", stream="stdout")
    text = (tmp_path / "demo.log").read_text()
    assert "[demo] bootstrap: done (seconds=1.5)" in text
    assert "[demo]   | subprocess line" in text
    # Not attached any more: later builds do not write into this file.
    assert not logging.getLogger("mkosi.build.demo").handlers
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    lines = [json.loads(line) for line in err.splitlines()]
    assert {"build": "demo", "event": "bootstrap: done", "seconds": 1.5}.items() <= lines[0].items()
    assert len(lines) == 1, "subprocess output reaches the console only with -v"


def test_matrix_refuses_a_release_directory_mkosi_did_not_publish(tmp_path: Path) -> None:
    (tmp_path / "mkosi.matrix").write_text('[matrix]\nFormat = ["tar"]\n[release]\nDirectory = "www"\n')
    (tmp_path / "www").mkdir()
    (tmp_path / "www/index.html").write_text("the user's")
    command = [str(INSTALLED_MKOSI), "matrix"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"mkosi matrix: {tmp_path}/www was not made by mkosi " + (
        "(it has no user.mkosi.output attribute): remove it yourself or choose another output\n"
    )
    # Refused before anything ran: no cells, no logs, no work directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mkosi.matrix", "www"]
    assert [p.name for p in (tmp_path / "www").iterdir()] == ["index.html"]


def test_python_m_mkosi_is_the_installed_command_matrix_included(tmp_path: Path) -> None:
    (tmp_path / "mkosi.matrix").write_text(
        '[matrix]\nDistribution = ["debian"]\nRelease = ["bookworm"]\nFormat = ["tar", "raw_gpt"]\n'
    )
    module = mkosi(tmp_path, "matrix", "--list")
    assert module.returncode == 0, module.stderr
    lines = module.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "debian-bookworm-tar",
        *("bootstrap", "configure", "clean", "output"),
        "debian-bookworm-raw_gpt",
        *("bootstrap", "configure", "clean", "filesystems", "output"),
    ]
    assert lines[1].endswith("  shared with debian-bookworm-raw_gpt")
    installed = subprocess.run(
        [str(INSTALLED_MKOSI), "matrix", "--list"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (installed.returncode, installed.stdout, installed.stderr) == (0, module.stdout, module.stderr)

    help = mkosi(tmp_path, "matrix", "--help")
    assert help.returncode == 0
    assert help.stdout.startswith("usage: mkosi matrix [-h] [-C DIR] [--matrix FILE] [--list]")


def test_no_mkosi_module_imports_the_matrix() -> None:
    # matrix/ imports mkosi, never the other way round; `python -m mkosi` reaches the matrix only
    # when mkosi/__main__.py runs as a program.
    modules = [m.name for m in pkgutil.walk_packages(mkosi_package.__path__, "mkosi.")]
    assert "mkosi.__main__" in modules and "mkosi.build" in modules
    assert "matrix" not in packages_imported_by(*modules)
