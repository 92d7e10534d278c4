"""Where a shared stage cache lives: `oci://HOST[:PORT]/REPOSITORY`, parsed once for the settings
table and the matrix file (mkosi.remote_cache talks to it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "oci://"
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")
# The distribution specification's repository names: lowercase path components.
_REPOSITORY = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*")


@dataclass(frozen=True)
class Registry:
    """Where the shared stage cache lives: a registry host and a repository in it."""

    host: str
    repository: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.host}/{self.repository}"

    def reference(self, key: str) -> str:
        return f"docker://{self.host}/{self.repository}:{key}"


def parse_registry(value: str) -> Registry:
    """oci://HOST[:PORT]/REPOSITORY, as `RemoteCache=` takes it."""
    text = value.strip()
    if not text.startswith(SCHEME):
        raise ValueError(f"invalid remote cache {text!r} (use {SCHEME}HOST[:PORT]/REPOSITORY)")
    host, _, repository = text.removeprefix(SCHEME).partition("/")
    if not _HOST.fullmatch(host):
        raise ValueError(f"invalid registry host {host!r} in {text!r}")
    if not _REPOSITORY.fullmatch(repository) or len(repository) > 255:
        raise ValueError(f"invalid repository {repository!r} in {text!r} (lowercase letters, digits, . _ - and /)")
    return Registry(host, repository)
