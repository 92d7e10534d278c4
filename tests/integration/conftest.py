"""Integration tests build real images from the real Debian mirror; they need root.

Downloaded packages are kept in a cache directory outside the checkout (see support.CACHE).
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi.distributions.debian import DEFAULT_MIRROR, host_mirrors
from tests.integration.support import ModuleDir, mkosi

FAILED = pytest.StashKey[bool]()


def _mirror_reachable() -> str | None:
    mirror = host_mirrors()[0] or DEFAULT_MIRROR
    try:
        urllib.request.urlopen(f"{mirror}/dists/bookworm/InRelease", timeout=10).close()
    except OSError as error:
        return f"the Debian mirror {mirror} is not reachable: {error}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unreachable = _mirror_reachable() if os.geteuid() == 0 else None
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
            # Modules that build from local mirrors only say so (NEEDS_DEBIAN_MIRROR = False).
            needs_mirror = getattr(getattr(item, "module", None), "NEEDS_DEBIAN_MIRROR", True)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="integration tests need root"))
            elif unreachable and needs_mirror:
                item.add_marker(pytest.mark.skip(reason=unreachable))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    module = item.getparent(pytest.Module)
    if report.failed and module is not None:
        module.stash[FAILED] = True
    return report


@pytest.fixture(scope="module")
def module_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleDir]:
    """Directories that live as long as the module's tests; see support.ModuleDir."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if not request.node.stash.get(FAILED, False):
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def debian_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project directory as a user would write it: mkosi.default plus mkosi.extra/."""
    project = tmp_path_factory.mktemp("project")
    (project / "mkosi.default").write_text(
        "[Distribution]\n"
        "Distribution=debian\n"
        "Release=bookworm\n"
        "\n"
        "[Output]\n"
        "Hostname=mkosi-test\n"
        "\n"
        "[Packages]\n"
        "Packages=less\n"
    )
    marker = project / "mkosi.extra/etc/mkosi-test-marker"
    marker.parent.mkdir(parents=True)
    marker.write_text("from mkosi.extra\n")
    return project


@pytest.fixture(scope="session")
def directory_image(debian_project: Path) -> Path:
    mkosi("-t", "directory", "-o", "directory-image", "-f", "build", cwd=debian_project)
    return debian_project / "directory-image"


@pytest.fixture(scope="session")
def tar_image(debian_project: Path) -> Path:
    mkosi("-t", "tar", "--compress=zstd", "-o", "image.tar.zst", "-f", "build", cwd=debian_project)
    return debian_project / "image.tar.zst"
