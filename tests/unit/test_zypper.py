"""zypper's failures to download, as one line: from zypper's real output against the tests' faulty
mirror (tests/integration/faulty_mirror.py in front of a local rpm mirror, MirrorTimeout=3)."""

from __future__ import annotations

import re

import pytest

from mkosi.package_managers import DamagedDownload, zypper
from mkosi.run import CommandError

URL = "http://127.0.0.1:46173/opensuse/update/tumbleweed/mkosi-test-hello-1-1.x86_64.rpm"
NAME = "mkosi-test-hello-1-1.x86_64.rpm"
RETRIEVING = "Retrieving package mkosi-test-hello-1-1.x86_64 (2/2),   6.3 KiB (   59   B unpacked)"
STALL = [
    RETRIEVING,
    f"Timeout exceeded when accessing '{URL}'.",
    "Retrieving: mkosi-test-hello-1-1.x86_64.rpm [...error (1.0 KiB/s)]",
    "Retrying in 30 seconds...",
]
CUT = [
    RETRIEVING,
    "Retrieving: mkosi-test-hello-1-1.x86_64.rpm [error]",
    f"Timeout exceeded when accessing '{URL}'.",
    "Retrying in 30 seconds...",
]
RESET = [
    RETRIEVING,
    "Retrieving: mkosi-test-hello-1-1.x86_64.rpm [error]",
    "Abort, retry, ignore? [a/r/i/...? shows all options] (a): a",
    f"Download (curl) error for '{URL}':",
    "Error code: Curl error 56",
    "Error message: Recv failure: Connection reset by peer",
    "",
    "Problem occurred during or after installation or removal of packages:",
    "Installation has been aborted as directed.",
]
DIGEST = "Digest verification failed"


def _digest_failed(got: str) -> list[str]:
    return [
        RETRIEVING,
        "Retrieving: mkosi-test-hello-1-1.x86_64.rpm [done]",
        "",
        f"Warning: Digest verification failed for file '{NAME}'",
        f"[/var/tmp/AP_0xuWPQFv/{NAME}]",
        "",
        "  expected b6ed4f00215efa7ee5b3b3940148f9211c7e8ad4ba1adf92616b832cb65d9fa6",
        f"  but got  {got}",
        f"Unblock or discard? [{got[:4]}/...? shows all options] (discard): discard",
        "Package mkosi-test-hello-1-1.x86_64 (u) seems to be corrupted during transfer. "
        "Do you want to retry retrieval?",
    ]


TRUNCATED = _digest_failed("2e6933adbed14c451d4b72a86055904e8c735eb2bca70e9b25660ad0e8ce559b")
CORRUPTED = _digest_failed("3f3d8af3fbdcd03840d844a658c18791e4eceed3a30e504de19d4148dc67b012")


@pytest.mark.parametrize(
    ("tail", "url", "what", "reason", "network"),
    [
        (STALL, URL, "the mirror sent nothing for 3 s (MirrorTimeout=3)", "Timeout exceeded", True),
        # A connection closed short of its Content-Length: libzypp words it as a timeout.
        (CUT, URL, "the mirror sent nothing for 3 s (MirrorTimeout=3)", "Timeout exceeded", True),
        (RESET, URL, "the mirror reset the connection", "Recv failure: Connection reset by peer", True),
        # A truncated file whose Content-Length matches it reads as a changed one.
        (TRUNCATED, NAME, "the file has another SHA-256 than the package index names", DIGEST, False),
        (CORRUPTED, NAME, "the file has another SHA-256 than the package index names", DIGEST, False),
    ],
    ids=["stall", "cut", "reset", "truncated", "corrupted"],
)
def test_a_failed_download_is_one_line_naming_the_file(
    tail: list[str], url: str, what: str, reason: str, network: bool
) -> None:
    failure = zypper.download_failure(CommandError(["zypper", "install"], 8, tail), 3)
    assert failure is not None
    assert str(failure) == f"could not download {url}: {what} (zypper: {reason})"
    # mkosi tries again after a network failure (zypper would wait 30 s, or not try again at all).
    assert failure.network == network and isinstance(failure, DamagedDownload) == (not network)
    assert str(failure.tried(3)).endswith(f": {what}, after 3 tries (zypper: {reason})")


def test_zypper_is_ended_where_it_would_wait_on_its_own() -> None:
    assert [line for line in STALL if re.search(zypper.WAITS, line)] == ["Retrying in 30 seconds..."]
    assert zypper.download_failure(CommandError(["zypper"], 104, ["No provider of 'nothing' found."]), 3) is None
