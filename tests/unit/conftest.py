"""Fixtures shared by the unit tests."""

from __future__ import annotations

import io
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mkosi import config, settings
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


StandardInput = Callable[[str], None]


@pytest.fixture(autouse=True)
def stdin(monkeypatch: pytest.MonkeyPatch) -> StandardInput:
    """What mkosi reads from standard input (a secret flag given as "-"): empty unless a test gives
    text, and read afresh after each give, although mkosi asks only once per process."""

    def give(text: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        config._read_secret.cache_clear()

    give("")
    return give
