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
