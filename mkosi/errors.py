"""Errors that mkosi reports to the user as one line, without a traceback."""

from __future__ import annotations


class MkosiError(Exception):
    """A failure the user can act on; the message is printed as is."""

    exit_status = 1


class ConfigError(MkosiError):
    """Invalid configuration: reported before anything is written, exit status 2.

    The message names where the bad input came from: "FILE:LINE: [Section] Key: problem" for
    configuration files, "--flag: problem" for the command line.
    """

    exit_status = 2

    def __init__(self, problem: str, *, origin: str | None = None, setting: str | None = None) -> None:
        self.problem = problem
        self.origin = origin
        self.setting = setting
        parts = [p for p in (origin, setting) if p]
        super().__init__(": ".join([*parts, problem]))
