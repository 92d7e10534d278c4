"""Running a built image: `mkosi shell` and `mkosi boot` (systemd-nspawn), `mkosi qemu` (UEFI VM)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from mkosi import binfmt, loopdev, secure_boot
from mkosi.config import Architecture, Compression, Config, OutputFormat
from mkosi.disk.partitions import Role, find_partition
from mkosi.errors import MkosiError
from mkosi.nspawn import NSPAWN
from mkosi.run import run, run_interactive

KVM_PROBE_SECONDS = 3


def _require_output(config: Config) -> None:
    if not (config.output.exists() or config.output.is_symlink()):
        raise MkosiError(f"{config.output} does not exist: build the image first")


@contextlib.asynccontextmanager
async def _root_of(config: Config, log: Any) -> AsyncIterator[tuple[list[str], list[str]]]:
    """How to give nspawn the image's root: a command prefix and nspawn's own arguments."""
    _require_output(config)
    if config.format.is_tree:
        yield [], ["--directory", str(config.output)]
    elif config.format.is_raw:
        if config.compress is not Compression.none:
            raise MkosiError(f"{config.output} is compressed: decompress it to run it")
        # nspawn --image needs udev and partition scanning, which not every host (or container)
        # has: mount just the root partition, in a mount namespace that dies with the command.
        offset, size = await find_partition(config.output, Role.root, config.architecture, log)
        read_only = config.read_only
        async with loopdev.attach(config.output, offset=offset, size=size, read_only=read_only, log=log) as device:
            with tempfile.TemporaryDirectory(prefix="mkosi-root.") as mountpoint:
                prefix = [
                    "unshare", "--mount", "--propagation=private", "--",
                    "sh", "-c", 'mount -o "$1" "$2" "$3" && shift 3 && exec "$@"',
                    "sh", "ro" if read_only else "rw", str(device), mountpoint,
                ]  # fmt: skip
                yield prefix, ["--directory", mountpoint]
    else:
        raise MkosiError(f"Format={config.format} images cannot be run: use directory, subvolume or a raw format")


async def shell(config: Config, args: Sequence[str], *, boot: bool = False) -> int:
    log = structlog.get_logger("mkosi")
    # An arm64 tree's programs, systemd included, run through qemu-user on an x86-64 host.
    async with binfmt.emulation(config.architecture, log), _root_of(config, log) as (prefix, root):
        # A machine name is a hostname: "raw_gpt.raw" becomes "raw-gpt".
        machine_name = re.sub(r"[^A-Za-z0-9-]+", "-", config.output.name.split(".")[0]).strip("-")[:64] or "mkosi"
        options = [*root, f"--machine={machine_name}", *(["--read-only"] if config.read_only else [])]
        if config.nspawn_settings is None:
            options.append("--settings=no")
        command = [*prefix, *NSPAWN, *options, *(["--boot"] if boot else []), *args]
        return await run_interactive(command, log=log)


async def kvm_usable(architecture: Architecture, log: Any) -> bool:
    """Whether KVM really runs a guest of `architecture` here (only the host's own); some hosts offer
    /dev/kvm but fail on the first instruction.

    The probe boots the firmware alone for a few seconds: a broken KVM reports an internal error
    (and hangs) at once, a working one is still running when time is up.
    """
    if not architecture.native or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="mkosi-kvm-probe.") as scratch:
        variables = Path(scratch) / "vars.fd"
        shutil.copyfile(architecture.firmware_variables, variables)
        probe = await run(
            ["timeout", str(KVM_PROBE_SECONDS), architecture.qemu_system,
             "-machine", f"{architecture.qemu_machine},accel=kvm", "-cpu", "host",
             "-m", "128", "-nodefaults", "-display", "none",
             "-drive", f"if=pflash,format=raw,readonly=on,file={architecture.firmware_code}",
             "-drive", f"if=pflash,format=raw,file={variables}"],
            capture_stdout=True, merge_stderr=True, check=False, log=log,
        )  # fmt: skip
    # Still running when time was up, and no complaint from KVM on the way.
    return probe.returncode == 124 and "KVM internal error" not in probe.stdout


def _boot_medium(config: Config) -> list[str]:
    """A disk (raw formats, esp) is the first drive; a UKI is handed to the firmware, which runs it
    as an EFI program. The root of a uki or esp image comes from a further drive in `args`."""
    if config.format is OutputFormat.uki:
        return ["-kernel", str(config.output)]
    return ["-drive", f"if=virtio,format=raw,file={config.output}"]


def qemu_command(config: Config, variables: Path, accel: str, args: Sequence[str]) -> list[str]:
    architecture = config.architecture
    # Secure Boot: firmware that enforces it, whose variable store (on x86-64) only SMM code may write.
    smm = config.secure_boot and architecture.smm
    secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if smm else []
    code = architecture.firmware_secure_code if config.secure_boot else architecture.firmware_code
    return [
        architecture.qemu_system,
        "-machine", f"{architecture.qemu_machine},accel={accel}" + (",smm=on" if smm else ""),
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(os.cpu_count() or 1),
        "-m", "1024",
        *secure,
        "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,file={variables}",
        *_boot_medium(config),
        "-nographic", "-nodefaults", "-serial", "mon:stdio",
        *args,
    ]  # fmt: skip


async def qemu(config: Config, args: Sequence[str]) -> int:
    log = structlog.get_logger("mkosi")
    _require_output(config)
    if not (config.format.boots and config.bootable):
        raise MkosiError("qemu needs a bootable image: a raw format built with --bootable, or uki or esp")
    if config.compress is not Compression.none:
        raise MkosiError(f"{config.output} is compressed: decompress it to boot it")
    architecture = config.architecture
    accel = "kvm" if await kvm_usable(architecture, log) else "tcg"
    log.info("booting in qemu", accel=accel, architecture=str(architecture))
    with tempfile.TemporaryDirectory(prefix="mkosi-qemu.") as scratch:
        # The firmware's variable store is per VM and written to: a copy of the template.
        variables = Path(scratch) / architecture.firmware_variables.name
        if config.secure_boot:
            assert config.secure_boot_certificate is not None
            await secure_boot.enroll(architecture.firmware_variables, variables, config.secure_boot_certificate, log)
        else:
            shutil.copyfile(architecture.firmware_variables, variables)
        return await run_interactive(qemu_command(config, variables, accel, args), log=log)
