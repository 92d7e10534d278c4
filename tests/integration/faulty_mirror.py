"""A mirror on 127.0.0.1 that passes everything through from another one (Debian's real mirror, or
the tests' local rpm mirrors), except one package file, which it damages on the way in one of the
ways real mirrors and networks fail."""

from __future__ import annotations

import contextlib
import enum
import http.server
import re
import shutil
import socket
import struct
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

# Headers of the real mirror's answer that package managers read; the others describe its connection,
# not the file.
PASSED_HEADERS = ("Content-Type", "Content-Length", "Last-Modified", "ETag")
CHUNK = 64 * 1024
# How long a stalled answer waits at most if nobody stops the mirror.
STALL_LIMIT = 600.0
PACKAGE_SUFFIXES = (".deb", ".rpm", ".pkg.tar.zst")


class Fault(enum.Enum):
    stall = "stall"  # half the file, then silence on an open connection
    reset = "reset"  # half the file, then a TCP reset
    cut = "cut"  # half the file, then the connection closed, short of the Content-Length announced
    truncated = "truncated"  # half the file, with a Content-Length that says it is all of it
    corrupted = "corrupted"  # the whole file with one byte changed


@dataclass
class FaultyMirror:
    """What the tests see of the mirror: its URL, and the damaged file's requests and size."""

    url: str
    # The damaged file's path below the mirror, as the package manager asked for it (GET), once for
    # every request.
    requests: list[str] = field(default_factory=list)
    size: int = 0

    @property
    def target_url(self) -> str:
        """The damaged file's URL, as package managers name it in their errors (unquoted: ~ where apt
        sent %7e)."""
        return urllib.parse.unquote(f"{self.url}{self.requests[0]}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    upstream: str
    # The upstream URL's path, which the mirror serves under too, e.g. "/debian".
    prefix: str
    # The start of the damaged file's path below the mirror, e.g. "/pool/main/l/less/less_".
    target: str
    fault: Fault
    # How many requests for the target get a damaged answer; the later ones pass through.
    faulty_answers: int
    # Whether a request for the rest of the damaged file (Range: bytes=N-) gets it.
    resumable: bool
    mirror: FaultyMirror
    stopped: threading.Event


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # pytest would show every request of a failing test

    def do_GET(self) -> None:
        server = self.server
        path = self.path.removeprefix(server.prefix)
        if path.startswith(server.target) and path.endswith(PACKAGE_SUFFIXES):
            server.mirror.requests.append(path)
            self._damaged(f"{server.upstream}{path}", len(server.mirror.requests) <= server.faulty_answers)
            return
        self._pass_through(f"{server.upstream}{path}")

    def do_HEAD(self) -> None:
        """The headers alone (zypper asks for a file's size before it downloads it), never counted."""
        self._pass_through(f"{self.server.upstream}{self.path.removeprefix(self.server.prefix)}", body=False)

    def _pass_through(self, url: str, body: bool = True) -> None:
        try:
            upstream = urllib.request.urlopen(urllib.request.Request(url, method=self.command), timeout=30)
        except urllib.error.HTTPError as error:
            self.send_response(error.code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with upstream:
            self.send_response(200)
            for name in PASSED_HEADERS:
                if value := upstream.headers.get(name):
                    self.send_header(name, value)
            self.end_headers()
            if body:
                shutil.copyfileobj(upstream, self.wfile, CHUNK)

    def _start(self) -> int:
        """Where the answer starts: a package manager resuming a file it has half of (pacman, after
        a failed try) asks for the rest, as real mirrors let it."""
        if not self.server.resumable:
            return 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            return int(match[1])
        return 0

    def _damaged(self, url: str, faulty: bool) -> None:
        """The target file from where the request asks, damaged by the fault if `faulty`."""
        with urllib.request.urlopen(url, timeout=30) as upstream:
            body = upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        self.server.mirror.size = len(body)
        start = min(self._start(), len(body))
        rest = body[start:]
        fault = self.server.fault if faulty else None
        sent = rest[: len(rest) // 2] if fault is not None else rest
        if fault is Fault.corrupted:
            middle = len(rest) // 2
            sent = rest[:middle] + bytes([rest[middle] ^ 0x01]) + rest[middle + 1 :]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(sent) if fault is Fault.truncated else len(rest)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        if fault is Fault.stall:
            self.server.stopped.wait(STALL_LIMIT)
        elif fault is Fault.reset:
            # Closing with a zero linger time sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True


@contextlib.contextmanager
def faulty_mirror(
    upstream: str, target: str, fault: Fault, faulty_answers: int = 1_000, *, resumable: bool = False
) -> Iterator[FaultyMirror]:
    """Serve `upstream` (a mirror's URL, e.g. Debian's, ending in /debian) on 127.0.0.1 under the same
    path, with the first `faulty_answers` answers for the package files whose path below it starts
    with `target` damaged by `fault`. Stopped, stalled answers included, when the context ends.

    `resumable`: a request for the rest of the damaged file gets it, as from real mirrors (pacman
    resumes a failed file). Not for apt's tests yet: apt, resuming a reset file, reports an
    "Undetermined Error" that its table does not map."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.upstream = upstream.rstrip("/")
    server.prefix = urllib.parse.urlparse(server.upstream).path
    server.target = target
    server.fault = fault
    server.faulty_answers = faulty_answers
    server.resumable = resumable
    server.stopped = threading.Event()
    server.mirror = FaultyMirror(f"http://127.0.0.1:{server.server_address[1]}{server.prefix}")
    thread = threading.Thread(target=server.serve_forever, name="faulty-mirror", daemon=True)
    thread.start()
    try:
        yield server.mirror
    finally:
        server.stopped.set()
        server.shutdown()
        server.server_close()
        thread.join()
