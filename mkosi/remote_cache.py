"""A stage cache shared through an OCI registry (`RemoteCache=oci://HOST[:PORT]/REPOSITORY`).

Each stage-cache entry (mkosi.stage_cache: tar archives plus a manifest of their sizes and SHA-256)
travels as an OCI image tagged with its stage key: one uncompressed tar layer per archive, named by
the `org.opencontainers.image.title` annotation, so the layers' digests are the archives' own and
every registry (GitHub's, GitLab's, the CNCF distribution registry) stores it as it stores images.

The registry protocol is skopeo's (containers/image, a Debian package): it reads the standard
credential files (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
`~/.docker/config.json`), verifies every blob's digest, retries, times out, and verifies TLS unless
told otherwise. Credentials in `MKOSI_REMOTE_CACHE_USERNAME`/`_PASSWORD` go into an auth file of
mkosi's own (mode 0600, removed afterwards): never into a command line or a log.

Faults never fail a build: a registry that cannot be reached is reported in one warning and not
asked again by this build; a pull that fails (a corrupt blob, a timeout) or a push that fails (a
full registry) is one warning, and the stage is built, or stays, here. A pulled entry is linked into
the local cache only when complete, and restored only after the local cache verified it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from mkosi.registry import Registry
from mkosi.run import run
from mkosi.workspace import remove_tree

USERNAME_VARIABLE = "MKOSI_REMOTE_CACHE_USERNAME"
PASSWORD_VARIABLE = "MKOSI_REMOTE_CACHE_PASSWORD"

TITLE = "org.opencontainers.image.title"
KEY_ANNOTATION = "org.mkosi.stage-key"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"

MISSING = ("manifest unknown", "name unknown", "not found", "404")
# A lookup is small; a copy moves archives of hundreds of megabytes.
LOOKUP_TIMEOUT = "30s"
COPY_TIMEOUT = "15m"
RETRIES = "2"


class RemoteCache:
    """The registry's side of a stage cache: look up, pull into, and push from a local cache directory."""

    def __init__(self, registry: Registry, insecure: bool, auth_file: Path | None, log: Any) -> None:
        self.registry = registry
        self.insecure = insecure
        self.auth_file = auth_file
        self.log = log
        self.reachable = True
        # Keys the registry is known to hold (found or pushed by this build): entries never change,
        # so every cell restoring a shared stage does not ask again.
        self.held: set[str] = set()

    def _options(self, direction: str) -> list[str]:
        """skopeo's TLS and credential options for the source (`src-`), destination (`dest-`) or the
        only image (``) of a command."""
        options = [f"--{direction}tls-verify=false"] if self.insecure else []
        if self.auth_file is not None:
            options.append(f"--{direction}authfile={self.auth_file}")
        return options

    def _unreachable(self, why: str) -> None:
        self.reachable = False
        self.log.warning(f"remote cache {self.registry} cannot be reached: {why}; building here without it")

    async def has(self, key: str) -> bool:
        """Whether the registry holds the entry of `key`. A registry that cannot be reached holds
        nothing for the rest of this build: the build does not wait for its timeout again and again."""
        if key in self.held:
            return True
        if not self.reachable:
            return False
        result = await run(
            ["skopeo", f"--command-timeout={LOOKUP_TIMEOUT}", "inspect", "--raw", f"--retry-times={RETRIES}",
             *self._options(""), self.registry.reference(key)],
            capture_stdout=True, merge_stderr=True, check=False, log=self.log,
        )  # fmt: skip
        if result.returncode == 0:
            self.held.add(key)
            return True
        # No such tag, or no such repository yet (the first push creates it): registries word it
        # differently.
        if any(answer in result.stdout.lower() for answer in MISSING):
            return False
        self._unreachable(_last_line(result.stdout))
        return False

    async def pull(self, key: str, entry: Path) -> dict[str, tuple[int, str]] | None:
        """Copy the archives of `key`'s entry into the new directory `entry`; their sizes and
        digests by name. None, with a warning, when the copy fails; None when there is no entry."""
        if not await self.has(key):
            return None
        layout = Path(tempfile.mkdtemp(prefix=f".pulling.{key}.", dir=entry.parent))
        try:
            copied = await run(
                ["skopeo", f"--command-timeout={COPY_TIMEOUT}", "copy", "--quiet", "--preserve-digests",
                 "--dest-oci-accept-uncompressed-layers", f"--retry-times={RETRIES}", *self._options("src-"),
                 self.registry.reference(key), f"oci:{layout}:{key}"],
                capture_stdout=True, merge_stderr=True, check=False, log=self.log,
            )  # fmt: skip
            if copied.returncode != 0:
                self.log.warning(f"could not pull stage {key[:12]} from {self.registry}: {_last_line(copied.stdout)}")
                return None
            try:
                records = _unpack_layout(layout, key, entry)
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
                self.log.warning(f"stage {key[:12]} in {self.registry} is not an entry mkosi pushed: {e}")
                return None
            self.log.info("pulled from the remote cache", key=key[:12], registry=str(self.registry))
            return records
        finally:
            with anyio.CancelScope(shield=True):
                await remove_tree(layout)

    async def push(self, key: str, entry: Path, records: Mapping[str, tuple[int, str]], architecture: str) -> None:
        """Push the local `entry` of `key` unless the registry has it already (then another shard
        was first, and its copy stays); a failure is a warning."""
        # has() finds out whether the registry can be reached at all, too.
        if await self.has(key) or not self.reachable:
            return
        scratch = Path(tempfile.mkdtemp(prefix=f".pushing.{key}.", dir=entry.parent))
        try:
            layout = scratch / "layout"
            _write_layout(layout, key, entry, records, architecture)
            pushed = await run(
                ["skopeo", f"--command-timeout={COPY_TIMEOUT}", "copy", "--quiet", "--preserve-digests",
                 f"--retry-times={RETRIES}", *self._options("dest-"), f"oci:{layout}:{key}",
                 self.registry.reference(key)],
                capture_stdout=True, merge_stderr=True, check=False, log=self.log,
            )  # fmt: skip
            if pushed.returncode != 0:
                self.log.warning(f"could not push stage {key[:12]} to {self.registry}: {_last_line(pushed.stdout)}")
                return
            self.held.add(key)
            self.log.info("pushed to the remote cache", key=key[:12], registry=str(self.registry))
        finally:
            with anyio.CancelScope(shield=True):
                await remove_tree(scratch)


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ValueError(f"unexpected digest {digest!r}")
    return layout / "blobs" / "sha256" / hexdigest


def _descriptor(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}
    if annotations:
        descriptor["annotations"] = annotations
    return descriptor


def _add_blob(layout: Path, content: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(content).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(content)
    return digest, len(content)


def _write_layout(layout: Path, key: str, entry: Path, records: Mapping[str, tuple[int, str]], arch: str) -> None:
    """The entry as an OCI image layout: its archives hard-linked in as uncompressed layers (their
    digests are what the entry's manifest records), a config naming them, a manifest tagged `key`."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = []
    for name, (size, digest) in sorted(records.items()):
        os.link(entry / name, blobs / digest)
        layers.append(_descriptor(LAYER_TYPE, digest, size, **{TITLE: name}))
    config = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "config": {},
    }
    config_digest, config_size = _add_blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": _descriptor(CONFIG_TYPE, config_digest, config_size),
        "layers": layers,
        "annotations": {KEY_ANNOTATION: key},
    }
    manifest_digest, manifest_size = _add_blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            _descriptor(MANIFEST_TYPE, manifest_digest, manifest_size, **{"org.opencontainers.image.ref.name": key})
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))


def _unpack_layout(layout: Path, key: str, entry: Path) -> dict[str, tuple[int, str]]:
    """The pulled image's layers linked into `entry` under their titles; their sizes and digests by name."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_text())
    if manifest.get("annotations", {}).get(KEY_ANNOTATION) != key:
        raise ValueError(f"its manifest names another stage key than {key[:12]}")
    entry.mkdir()
    records: dict[str, tuple[int, str]] = {}
    for layer in manifest["layers"]:
        name = layer["annotations"][TITLE]
        # A title that could lead out of the entry is no archive of it.
        if not (isinstance(name, str) and name.endswith(".tar") and "/" not in name and not name.startswith(".")):
            raise ValueError(f"layer title {name!r}")
        blob = _blob(layout, layer["digest"])
        os.link(blob, entry / name)
        records[name] = (int(layer["size"]), layer["digest"].partition(":")[2])
    return records


def _auth_file_content(host: str, username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": token}}})


@contextlib.asynccontextmanager
async def remote_cache(registry: Registry | None, insecure: bool, log: Any) -> AsyncIterator[RemoteCache | None]:
    """The remote cache for one build or matrix, with its own auth file while it lasts when the
    environment carries credentials."""
    if registry is None:
        yield None
        return
    username, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if not (username and password):
        yield RemoteCache(registry, insecure, None, log)
        return
    with tempfile.TemporaryDirectory(prefix="mkosi-registry-auth.") as private:
        auth_file = Path(private) / "auth.json"
        descriptor = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(_auth_file_content(registry.host, username, password))
        yield RemoteCache(registry, insecure, auth_file, log)
