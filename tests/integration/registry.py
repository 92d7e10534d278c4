"""A real OCI registry for the tests: Debian's docker-registry (the CNCF distribution registry) on
127.0.0.1 with a configuration of its own, storage in a temporary directory, stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{auth}"""
AUTH = """\
auth:
  htpasswd:
    realm: mkosi-tests
    path: {htpasswd}
"""


@dataclass(frozen=True)
class Registry:
    port: int
    storage: Path
    pid: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving now, before the block that started it ends (a registry that went down)."""
        os.kill(self.pid, signal.SIGTERM)

    def blobs(self) -> list[Path]:
        """The registry's stored blobs, largest first."""
        found = list((self.storage / "docker/registry/v2/blobs").rglob("data"))
        return sorted(found, key=lambda p: p.stat().st_size, reverse=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 401 with authentication: it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("docker-registry did not start serving within 30 s")


@contextlib.contextmanager
def registry(directory: Path, user: tuple[str, str] | None = None) -> Iterator[Registry]:
    """A registry serving on a free port of 127.0.0.1 until the block ends; with `user`, only to
    that user (htpasswd basic auth)."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = ""
    if user is not None:
        htpasswd = directory / "htpasswd"
        entry = subprocess.run(["htpasswd", "-Bbn", *user], capture_output=True, text=True, check=True).stdout
        htpasswd.write_text(entry)
        auth = AUTH.format(htpasswd=htpasswd)
    port = _free_port()
    config = directory / "config.yml"
    config.write_text(CONFIG.format(storage=directory / "storage", port=port, auth=auth))
    log = directory / "registry.log"
    with log.open("wb") as output:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=output, stderr=output)
    try:
        _wait_until_serving(port, process, log)
        yield Registry(port, directory / "storage", process.pid)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
