"""The build's stages as a whole: every setting that can change an image reaches a stage's key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mkosi.build import NOT_IMAGE_INPUTS, STAGES
from mkosi.config import Config, parse_args


class _Reads:
    """A Config that records which fields are read."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self._config, name)


def _fields_the_stages_read(config: Config) -> set[str]:
    reads = _Reads(config)
    for stage in STAGES:
        if stage.enabled(reads):  # type: ignore[arg-type]
            stage.inputs(reads)  # type: ignore[arg-type]
    return reads.read


def test_every_setting_is_a_stage_input_or_declared_to_change_no_image(tmp_path: Path) -> None:
    # Between them these turn every stage on: a two-phase build of a bootable, encrypted disk.
    script = tmp_path / "mkosi.build"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (tmp_path / "mkosi.passphrase").write_text("secret")
    (tmp_path / "mkosi.passphrase").chmod(0o600)
    plain = parse_args(["-C", str(tmp_path), "-t", "directory"])[1]
    disk = parse_args(["-C", str(tmp_path), "-t", "raw_gpt", "--bootable", "--encrypt=data", "--sign"])[1]
    read = _fields_the_stages_read(plain) | _fields_the_stages_read(disk)
    fields = {f.name for f in dataclasses.fields(Config)}
    # A setting in neither would silently reuse a stale cached stage when it changes.
    assert fields - read - NOT_IMAGE_INPUTS == set()
    # Declared to change no image, yet read by a stage: one of the two is wrong.
    assert NOT_IMAGE_INPUTS & read == set()
    assert fields >= NOT_IMAGE_INPUTS


def test_a_setting_missing_from_every_stage_would_be_found(tmp_path: Path) -> None:
    config = parse_args(["-C", str(tmp_path), "-t", "directory"])[1]
    # The hostname reaches the configure stage: the check above sees it being read.
    assert "hostname" in _fields_the_stages_read(config)
    assert "verbose" not in _fields_the_stages_read(config)
