"""The `oci` output: the tree as an OCI image layout directory (OCI image-spec 1.0).

`oci-layout`, `index.json` and `blobs/sha256/`: one layer (the tree as the `tar` output writes it,
compressed per Compress=), a config naming the architecture and os with `created` at the epoch, and
a manifest annotated from the tree's os-release. Every blob is named by its digest and every JSON
document is written with sorted keys, so the same tree and epoch give the same digests.
`skopeo copy oci:DIR docker://...` pushes it to a registry; `umoci unpack` gives the tree back.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio

from mkosi import intree
from mkosi.checksums import sha256_file
from mkosi.config import Compression, Config
from mkosi.context import Context
from mkosi.distributions import os_release_fields
from mkosi.outputs.compress import compress_file
from mkosi.outputs.tar import tar_tree

LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
# The tag of the one image in the layout (`oci:DIR:latest`), as skopeo and umoci name an image
# when they are given none.
TAG = "latest"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, path: Path, digest: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": path.stat().st_size}


def created(config: Config) -> str:
    """RFC 3339 in UTC: the epoch when there is one, else the time of the build."""
    epoch = config.source_date_epoch if config.source_date_epoch is not None else int(time.time())
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def os_release_annotations(root: Path, when: str) -> dict[str, str]:
    """The image-spec's pre-defined annotations that the tree's os-release answers."""
    found = intree.read_bytes(root, "etc/os-release") or intree.read_bytes(root, "usr/lib/os-release") or b""
    fields = os_release_fields(found.decode(errors="replace"))
    wanted = {
        "org.opencontainers.image.title": fields.get("NAME"),
        "org.opencontainers.image.description": fields.get("PRETTY_NAME"),
        "org.opencontainers.image.version": fields.get("IMAGE_VERSION") or fields.get("VERSION_ID"),
        "org.opencontainers.image.url": fields.get("HOME_URL"),
        "org.opencontainers.image.created": when,
    }
    return {key: value for key, value in wanted.items() if value}


async def _add_blob(blobs: Path, source: Path) -> str:
    """Move `source` into the layout under its digest, which is returned."""
    digest = await anyio.to_thread.run_sync(sha256_file, source)
    os.replace(source, blobs / digest)
    return digest


async def _write_json_blob(blobs: Path, document: dict[str, Any]) -> tuple[Path, str]:
    staged = blobs / "document.json.tmp"
    staged.write_bytes(_json(document))
    digest = await _add_blob(blobs, staged)
    return blobs / digest, digest


async def write(context: Context) -> None:
    config, log = context.config, context.log
    media_type = config.compress.oci_layer_media_type
    assert media_type is not None, "Compress= was validated against the OCI media types"
    layout = context.stage_output(config.output)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    # The uncompressed tar's digest is the layer's diff_id, which the config lists.
    layer_tar = blobs / "layer.tar.tmp"
    await tar_tree(context.root, layer_tar, Compression.none, log, config.source_date_epoch)
    diff_id = await anyio.to_thread.run_sync(sha256_file, layer_tar)
    if config.compress is Compression.none:
        layer_digest = await _add_blob(blobs, layer_tar)
    else:
        compressed = blobs / "layer.tmp"
        await compress_file(config.compress, layer_tar, compressed, log)
        layer_tar.unlink()
        layer_digest = await _add_blob(blobs, compressed)
    when = created(config)
    image_config = {
        "architecture": config.architecture.oci,
        "os": "linux",
        "created": when,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "config": {},
    }
    config_path, config_digest = await _write_json_blob(blobs, image_config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": _descriptor(CONFIG_MEDIA_TYPE, config_path, config_digest),
        "layers": [_descriptor(media_type, blobs / layer_digest, layer_digest)],
        "annotations": os_release_annotations(context.root, when),
    }
    manifest_path, manifest_digest = await _write_json_blob(blobs, manifest)
    entry = _descriptor(MANIFEST_MEDIA_TYPE, manifest_path, manifest_digest)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{**entry, "annotations": {REF_NAME: TAG}}],
    }
    (layout / "index.json").write_bytes(_json(index))
    (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": LAYOUT_VERSION}))
    log.info("oci image layout", manifest=f"sha256:{manifest_digest}", layer=media_type)
