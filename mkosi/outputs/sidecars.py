"""Files published next to the output: `<image>.nspawn`, and SHA256SUMS with its gpg signature.

They run after the output is staged, so the checksums cover exactly what will be published (the
image, `.roothash`, `.nspawn`), under the names it will be published as; the build log is not an
output and is left out.
"""

from __future__ import annotations

import shutil

from mkosi import checksums, naming
from mkosi.config import OutputFormat
from mkosi.context import Context
from mkosi.run import run


async def write(context: Context) -> None:
    config = context.config
    if config.nspawn_settings is not None:
        nspawn = naming.sidecar(config.output, naming.NSPAWN_SUFFIX)
        shutil.copyfile(config.nspawn_settings, context.stage_output(nspawn))
    if config.bmap:
        # Which blocks of the image hold data, for bmaptool copy (and the checksums cover it).
        bmap = context.stage_output(naming.sidecar(config.output, naming.BMAP_SUFFIX))
        await run(["bmaptool", "create", "-o", str(bmap), str(context.staged[config.output])], log=context.log)
    if not config.checksum:
        return
    # A tree is not a file: only the files next to it can be summed. An OCI layout's files are,
    # as NAME/index.json, NAME/blobs/sha256/...: `sha256sum -c` in the output's directory checks them.
    artifacts = []
    for final, staged in sorted(context.staged.items()):
        if staged.is_file():
            artifacts.append(await checksums.describe_artifact(staged, final.name))
        elif config.format is OutputFormat.oci and final == config.output:
            for path in sorted(p for p in staged.rglob("*") if p.is_file()):
                name = f"{final.name}/{path.relative_to(staged).as_posix()}"
                artifacts.append(await checksums.describe_artifact(path, name))
    sums = context.stage_output(config.output.parent / naming.SUMS)
    sums.write_text(checksums.checksums(artifacts))
    if config.sign:
        signature = context.stage_output(config.output.parent / naming.SIGNATURE)
        await checksums.sign(sums, config.key, context.log, signature, config.source_date_epoch)
