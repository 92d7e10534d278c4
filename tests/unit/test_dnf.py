"""dnf's failures to download, as one line: from dnf's real output against the tests' faulty mirror
(tests/integration/faulty_mirror.py in front of a local rpm mirror, MirrorTimeout=3)."""

from __future__ import annotations

import pytest

from mkosi.package_managers import DamagedDownload, dnf
from mkosi.run import CommandError

URL = "http://127.0.0.1:35049/fedora/updates/45/Everything/x86_64/mkosi-test-hello-1-1.x86_64.rpm"
NAME = "mkosi-test-hello-1-1.x86_64.rpm"


def _failed(*tries: str) -> CommandError:
    """dnf's last lines when every try (librepo makes four) of the package failed."""
    return CommandError(
        ["dnf", "install"],
        1,
        [
            "Downloading Packages:",
            *(f"[MIRROR] {NAME}: {line}" for line in tries[:1]),
            "(1/2): mkosi-test-base-1-1.x86_64.rpm            77 MB/s | 1.0 MB     00:00    ",
            *(f"[MIRROR] {NAME}: {line}" for line in tries[1:]),
            f"[FAILED] {NAME}: No more mirrors to try - All mirrors were already tried without success",
            "",
            "Error: Error downloading packages:",
            "  mkosi-test-hello-1-1.x86_64: Cannot download, all mirrors were already tried without success",
        ],
    )


@pytest.mark.parametrize(
    ("line", "url", "what", "reason"),
    [
        (
            f"Curl error (28): Timeout was reached for {URL} [Operation too slow. Less than 1000 bytes/sec "
            "transferred the last 3 seconds]",
            URL,
            "the mirror sent nothing for 3 s (MirrorTimeout=3)",
            "Curl error (28): Timeout was reached [Operation too slow. Less than 1000 bytes/sec transferred the "
            "last 3 seconds]",
        ),
        (
            f"Curl error (56): Failure when receiving data from the peer for {URL} [Recv failure: Connection reset "
            "by peer]",
            URL,
            "the mirror reset the connection",
            "Curl error (56): Failure when receiving data from the peer [Recv failure: Connection reset by peer]",
        ),
        (
            f"Curl error (18): Transferred a partial file for {URL} [transfer closed with 3209 bytes remaining to "
            "read]",
            URL,
            "the mirror closed the connection before the end of the file",
            "Curl error (18): Transferred a partial file [transfer closed with 3209 bytes remaining to read]",
        ),
        # A file that came but was not the one named: dnf names the file, not its URL.
        (
            "Interrupted by header callback: Inconsistent server data, reported file Content-Length: 3208, "
            "repository metadata states file length: 6417 (please report to repository maintainer)",
            NAME,
            "the mirror sent 3208 bytes of 6417",
            "Interrupted by header callback: Inconsistent server data, reported file Content-Length: 3208, "
            "repository metadata states file length: 6417 (please report to repository maintainer)",
        ),
        (
            "Downloading successful, but checksum doesn't match. Calculated: baec7ce7(sha256)  Expected: "
            "207eab0d(sha256) ",
            NAME,
            "the file has another SHA-256 than the package index names",
            "Downloading successful, but checksum doesn't match. Calculated: baec7ce7(sha256)  Expected: "
            "207eab0d(sha256)",
        ),
    ],
    ids=["stall", "reset", "cut", "truncated", "corrupted"],
)
def test_a_failed_download_is_one_line_naming_the_file_and_librepos_tries(
    line: str, url: str, what: str, reason: str
) -> None:
    failure = dnf.download_failure(_failed(line, line, line, line), 3)
    assert failure is not None
    assert str(failure) == f"could not download {url}: {what}, after 4 tries (dnf: {reason})"
    assert isinstance(failure, DamagedDownload) == ("bytes of" in what or "SHA-256" in what)


def test_the_first_file_is_named_and_the_others_counted() -> None:
    other = "[MIRROR] mkosi-test-base-1-1.x86_64.rpm: Curl error (7): Couldn't connect to server for http://m/b.rpm [x]"
    error = _failed(f"Curl error (28): Timeout was reached for {URL} [Operation too slow]")
    failure = dnf.download_failure(CommandError(error.argv, 1, [*error.tail, other]), 60)
    assert failure is not None and failure.url == URL and failure.tries == 1 and failure.others == 1
    # Anything else dnf fails at is left to the other checks.
    assert dnf.download_failure(CommandError(["dnf"], 1, ["No match for argument: nothing"]), 60) is None
