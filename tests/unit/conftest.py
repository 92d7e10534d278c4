"""Fixtures shared by the unit tests."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from mkosi import settings
from mkosi.distributions import Distribution


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as the working directory, on a Debian bookworm x86-64 host."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(settings, "detect_host", lambda: (Distribution.debian, "bookworm"))
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    return tmp_path


@pytest.fixture(scope="session")
def private_gnupg_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    return home


@pytest.fixture(autouse=True)
def no_gnupg_home_of_the_caller(monkeypatch: pytest.MonkeyPatch, private_gnupg_home: Path) -> None:
    """Signing refuses a gpg home others can read: the caller's own ~/.gnupg must not decide tests."""
    monkeypatch.setenv("GNUPGHOME", str(private_gnupg_home))
