"""A content-addressed cache of workspace snapshots, one per stage key.

After a cacheable stage the whole workspace is its result, so a copy of it stands in for running
the stage (and every stage before it: keys are chained) again. Each entry is a directory, DIR/<key>/, of
tar archives, one per top-level item of the workspace (the image's tree, the build image, file
system images), written under a temporary name and renamed into place, so a reader never sees half
an entry, and entries never change once written. The archives are written and extracted side by
side: extracting a build image and the final tree at once takes about half as long on two cores.

Each entry is trusted only as far as it proves itself: its manifest (manifest.json, written before
the rename) records the size and SHA-256 of every archive. The rename alone cannot vouch for the
bytes: a disk error, a copy cut short by another tool, a power cut before the data reached the disk,
or an entry of an older mkosi that had none of this. A restore checks the entry's shape and sizes
first (cheap), then extracts each archive beside the workspace's items while a thread hashes it;
only an entry whose every digest matches replaces them. A damaged entry is reported in one warning,
dropped (renamed out of the way, then removed) and the build goes on as if it had never been there.

Why archives and not copies of the tree: the workspace lives on tmpfs and the cache on disk, and
creating ten thousand small files on the disk's file system is what a snapshot used to cost; one
sparse tar file per item is written many times faster, and extracting it to tmpfs takes about as
long as copying the tree (figures in the README).

The cache works on segments, runs of consecutive cacheable stages (see pipeline.segments), each in
one call: walking back from the segment's end to the deepest intact entry (a damaged one on the way
is dropped), restoring it, running the rest and storing at the keys worth keeping.

Single flight: before it builds, a build takes the lock of the next key it will store (per key,
both in-process and across processes), so a concurrent build of the same key waits for it and then
restores the finished copy instead of building it a second time. A build holds at most one such
lock at a time and never waits for another while holding one, so builds cannot deadlock.

Look-ahead: when a later stage of the segment already has an entry, only the deepest entry is
restored; the stages before it are reported as reused without copying anything.

`keep(key)` decides which keys are worth storing: every key for incremental builds of one image;
for a matrix, only the keys other cells will ask for too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from mkosi import concurrency, ownership
from mkosi.context import Context
from mkosi.pipeline import Stage, Steps
from mkosi.remote_cache import RemoteCache
from mkosi.run import CommandError, run
from mkosi.workspace import remove_tree, remove_trees

# Everything a root file system tree holds: ownership by number (the tree's users are not the
# host's), permissions, ACLs and extended attributes (file capabilities), hard links, and holes in
# sparse files such as file system images.
ARCHIVE_OPTIONS = ["--sparse", "--acls", "--xattrs", "--xattrs-include=*", "--numeric-owner"]


def _keep_all(key: str) -> bool:
    return True


OWNERS = "owners"


def cached_keys(directory: Path) -> set[str]:
    """The keys the cache in `directory` holds an entry for."""
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.name != OWNERS and not p.name.startswith(".") and _complete(p)}


def _complete(entry: Path) -> bool:
    """An entry of archives, intact or not (restore() finds out, and drops it if not); a directory
    without any is a tree copy left by an older mkosi."""
    return entry.is_dir() and any(entry.glob("*.tar"))


MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Big enough that hashing runs at the speed of SHA-256 itself, not of Python's loop around it.
HASH_CHUNK = 1 << 20


class DamagedEntry(Exception):
    """An entry that must not be restored; the message says what is wrong with it."""


@dataclass(frozen=True)
class ArchiveRecord:
    """What the manifest of an entry records of one of its archives."""

    size: int
    sha256: str


@dataclass(frozen=True)
class OpenArchive:
    """An archive of an entry, opened once: its size, its digest and tar all read that one file,
    even if the entry is dropped by another build meanwhile."""

    name: str  # "root.tar"
    fd: int
    record: ArchiveRecord

    @property
    def item(self) -> str:
        return self.name.removesuffix(".tar")


def sha256_of(fd: int) -> str:
    """The SHA-256 of the whole file open as `fd`, read by offset: whoever else reads the same open
    file (tar, on its standard input) keeps its own position."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while count := os.preadv(fd, [buffer], offset):
        digest.update(view[:count])
        offset += count
    return digest.hexdigest()


def _record_of(path: Path) -> ArchiveRecord:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return ArchiveRecord(os.fstat(fd).st_size, sha256_of(fd))
    finally:
        os.close(fd)


def write_manifest(entry: Path, key: str, records: Mapping[str, ArchiveRecord]) -> None:
    archives = {name: {"size": r.size, "sha256": r.sha256} for name, r in sorted(records.items())}
    text = json.dumps({"format": MANIFEST_FORMAT, "key": key, "archives": archives}, indent=2)
    (entry / MANIFEST).write_text(text + "\n")


def _parse_record(name: object, value: object) -> tuple[str, ArchiveRecord]:
    """One archive's line of the manifest; a name that could lead out of the entry is no archive."""
    if not (isinstance(name, str) and name.endswith(".tar") and "/" not in name and not name.startswith(".")):
        raise ValueError(name)
    if not isinstance(value, dict):
        raise ValueError(value)
    size, sha256 = value["size"], value["sha256"]
    if not (isinstance(size, int) and size >= 0 and isinstance(sha256, str) and len(sha256) == 64):
        raise ValueError(value)
    return name, ArchiveRecord(size, sha256)


def read_manifest(entry: Path) -> dict[str, ArchiveRecord]:
    """The archives the manifest of `entry` records, by file name."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        if not entry.is_dir():
            raise DamagedEntry("it is gone (dropped by another build meanwhile)") from None
        raise DamagedEntry(f"it has no {MANIFEST} (written by an earlier mkosi, or never finished)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedEntry(f"its {MANIFEST} is unreadable: {e}") from None
    try:
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(manifest["format"])
        records = dict(_parse_record(name, value) for name, value in manifest["archives"].items())
        key = manifest["key"]
    except (TypeError, KeyError, AttributeError, ValueError):
        raise DamagedEntry(f"its {MANIFEST} is not a manifest this mkosi writes") from None
    if key != entry.name:
        raise DamagedEntry(f"its {MANIFEST} is that of the entry {key}")
    if not records:
        raise DamagedEntry(f"its {MANIFEST} records no archive")
    return records


def _check_listing(entry: Path, records: Mapping[str, ArchiveRecord]) -> None:
    present = {child.name for child in entry.iterdir()} - {MANIFEST}
    if missing := sorted(records.keys() - present):
        raise DamagedEntry(f"{missing[0]} is missing")
    if stray := sorted(present - records.keys()):
        raise DamagedEntry(f"{stray[0]} is not in its {MANIFEST}")


def _open_archive(entry: Path, name: str, record: ArchiveRecord) -> OpenArchive:
    fd = os.open(entry / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    size = os.fstat(fd).st_size
    if size != record.size:
        os.close(fd)
        raise DamagedEntry(f"{name} has {size} bytes, its {MANIFEST} records {record.size}")
    return OpenArchive(name, fd, record)


@contextlib.contextmanager
def opened_entry(entry: Path) -> Iterator[list[OpenArchive]]:
    """The archives of `entry`, open, once its shape is what its manifest says: exactly the archives
    it records, each of its recorded size (a truncated copy shows here, before anything is read)."""
    with contextlib.ExitStack() as opened:
        archives = []
        try:
            records = read_manifest(entry)
            _check_listing(entry, records)
            for name, record in sorted(records.items()):
                archive = _open_archive(entry, name, record)
                opened.callback(os.close, archive.fd)
                archives.append(archive)
        except OSError as e:
            raise DamagedEntry(f"it is unreadable: {e}") from None
        yield archives


def content_problem(archive: OpenArchive) -> str | None:
    """What is wrong with the archive's bytes, read in full; None when they have the recorded digest."""
    try:
        digest = sha256_of(archive.fd)
    except OSError as e:
        return f"{archive.name} is unreadable: {e}"
    if digest != archive.record.sha256:
        return f"{archive.name} has SHA-256 {digest[:16]}…, its {MANIFEST} records {archive.record.sha256[:16]}…"
    return None


async def _archive_one(context: Context, entry: Path, name: str, home: Path) -> ArchiveRecord:
    path = entry / f"{name}.tar"
    await run(["tar", "--create", f"--file={path}", f"--directory={home}", *ARCHIVE_OPTIONS, name], log=context.log)
    # Hashed right after it was written, from the page cache, in a thread: the event loop goes on.
    return await anyio.to_thread.run_sync(_record_of, path)


async def archive(context: Context, entry: Path) -> dict[str, ArchiveRecord]:
    """Each item of the build's workspace into ENTRY/<item>.tar, side by side; their records by file name."""
    records: dict[str, ArchiveRecord] = {}

    async def one(name: str, home: Path) -> None:
        records[f"{name}.tar"] = await _archive_one(context, entry, name, home)

    async with anyio.create_task_group() as tg:
        for name, home in context.items().items():
            tg.start_soon(one, name, home)
    return records


async def _extract_checked(archive: OpenArchive, staging: Path, log: Any) -> str | None:
    """Extract `archive` into `staging` while a thread hashes it; returns what is wrong with its
    bytes, if anything. The digest decides: tar's failure on a damaged archive is the damage, while
    tar failing on an intact one (a full workspace) is an error of the build."""
    problem: list[str | None] = []

    async def check() -> None:
        problem.append(await anyio.to_thread.run_sync(content_problem, archive))

    command = ["tar", "--extract", "--file=-", f"--directory={staging}", *ARCHIVE_OPTIONS]
    async with anyio.create_task_group() as tg:
        tg.start_soon(check)
        extracted = await run([*command, "--same-permissions", "--same-owner"], stdin=archive.fd, check=False, log=log)
    if problem[0] is None and extracted.returncode != 0:
        raise CommandError(extracted.argv, extracted.returncode, extracted.tail)
    return problem[0]


def _staging_directory(context: Context, item: str) -> Path:
    """A new directory in the home of `item`: on its file system, so the restored item moves in by rename."""
    return Path(tempfile.mkdtemp(prefix=f".restoring.{item}.", dir=context.home_of(item)))


async def extract(archives: Sequence[OpenArchive], context: Context) -> dict[str, Path]:
    """The archives, side by side, each into a staging directory next to where its item lives (so
    that a rename puts it in place); the staging directories by item. Raises DamagedEntry, and
    leaves no staging directory behind, unless every archive had its recorded digest."""
    staging = {a.item: _staging_directory(context, a.item) for a in archives}
    problems: list[str | None] = []

    async def one(archive: OpenArchive) -> None:
        problems.append(await _extract_checked(archive, staging[archive.item], context.log))

    try:
        async with anyio.create_task_group() as tg:
            for archive in archives:
                tg.start_soon(one, archive)
        if found := [p for p in problems if p is not None]:
            raise DamagedEntry(found[0])
    except BaseException:
        await remove_trees(list(staging.values()))
        raise
    return staging


async def replace_items(context: Context, old: Sequence[Path], staging: Mapping[str, Path]) -> None:
    """The workspace's items `old` give way to the restored ones waiting in `staging`."""
    await remove_trees(list(old))
    for item, directory in staging.items():
        os.rename(directory / item, context.home_of(item) / item)
    await remove_trees(list(staging.values()))


async def drop_entry(entry: Path) -> None:
    """Remove an entry so that no concurrent reader sees half of it: one rename takes it out of the
    cache (a reader finds all of it or nothing; one that opened its archives reads them to the end),
    then it is removed where nobody looks."""
    if not entry.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f".dropped.{entry.name}.", dir=entry.parent))
    with contextlib.suppress(FileNotFoundError):  # dropped by another build meanwhile
        os.rename(entry, aside / entry.name)
    await remove_trees([aside])


@dataclass
class SnapshotCache:
    directory: Path
    keep: Callable[[str], bool] = _keep_all
    # Shared with other machines: entries worth keeping are pulled from it and pushed to it.
    remote: RemoteCache | None = None
    # Counters, for reports and tests.
    built: list[str] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    _claimed: bool = field(default=False, init=False, repr=False)

    def entry(self, key: str) -> Path:
        return self.directory / key

    def _claim(self) -> None:
        """Make the cache directory, as mkosi's (see ownership.claim_directory), once per cache."""
        if not self._claimed:
            ownership.claim_directory(self.directory, ownership.STAGE_CACHE)
            self._claimed = True

    def has(self, key: str) -> bool:
        return _complete(self.entry(key))

    async def run_segment(self, context: Context, segment: Sequence[tuple[Stage, str]], steps: Steps) -> None:
        """Leave the result of a run of consecutive cacheable stages in the workspace.

        Walks the segment in spans, each ending at the next key worth storing. For each span it holds
        that key's lock (single flight), restores the deepest stored entry of the rest of the
        segment if there is one, else builds the span's stages and stores its last one. A lock lives
        in the `async with` that took it: released when the span ends, however it ends.
        """
        position = 0
        while position < len(segment):
            rest = segment[position:]
            target = next((i for i, (_, key) in enumerate(rest) if self.keep(key)), None)
            span = rest if target is None else rest[: target + 1]
            async with self._single_flight(span[-1][1] if target is not None else None):
                if covered := await self._restore_deepest(context, rest, steps):
                    position += covered
                    continue
                for stage, key in span:
                    await steps.run(stage, key)
                    self.built.append(key)
                if target is not None:
                    await self.store(span[-1][1], context)
                position += len(span)

    @contextlib.asynccontextmanager
    async def _single_flight(self, key: str | None) -> AsyncIterator[None]:
        """Hold the lock of `key`, so that concurrent builds of it wait and restore what this one stores."""
        if key is None:
            yield
            return
        self._claim()
        async with concurrency.exclusive(self.directory / f".{key}.lock"):
            yield

    async def _restore_deepest(self, context: Context, rest: Sequence[tuple[Stage, str]], steps: Steps) -> int:
        """Restore the deepest stored entry of `rest`; how many of its stages that covers (0: none).
        A damaged entry is dropped and the next one back tried, as if it had never been there."""
        for hit in reversed(range(len(rest))):
            key = rest[hit][1]
            pulled = not self.has(key) and await self._pull(key)
            if (pulled or self.has(key)) and await self._restore_to(context, rest[: hit + 1], steps, pulled):
                return hit + 1
        return 0

    async def _restore_to(
        self, context: Context, stages: Sequence[tuple[Stage, str]], steps: Steps, pulled: bool
    ) -> bool:
        """Only the last of `stages` is restored: the others' results are part of it (keys are chained).
        None of them is reported reused before the entry proved intact."""
        stage, key = stages[-1]
        started = time.monotonic()
        if not await self.restore(key, context):
            return False
        for earlier, earlier_key in stages[:-1]:
            steps.reused(earlier, earlier_key, 0.0, pulled)
        steps.reused(stage, key, time.monotonic() - started, pulled)
        if not pulled:
            # Stored here by an earlier build: the registry may still lack it.
            await self._push(key, context)
        return True

    async def _pull(self, key: str) -> bool:
        """The remote cache's entry of `key` into this cache, complete or not at all."""
        if self.remote is None or not self.keep(key):
            return False
        self._claim()
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp.{key}.", dir=self.directory))
        try:
            records = await self.remote.pull(key, temporary / key)
            if records is None:
                return False
            write_manifest(temporary / key, key, {name: ArchiveRecord(*record) for name, record in records.items()})
            try:
                os.rename(temporary / key, self.entry(key))
                self.pulled.append(key)
            except OSError:
                pass  # another build stored or pulled it meanwhile: that copy stays
        finally:
            with anyio.CancelScope(shield=True):
                await remove_tree(temporary)
        return self.has(key)

    async def _push(self, key: str, context: Context) -> None:
        if self.remote is None or not self.keep(key):
            return
        try:
            records = read_manifest(self.entry(key))
        except DamagedEntry:
            return  # dropped by another build meanwhile: nothing to share
        await self.remote.push(
            key,
            self.entry(key),
            {name: (r.size, r.sha256) for name, r in records.items()},
            context.config.architecture.oci,
        )

    async def restore(self, key: str, context: Context) -> bool:
        """Replace the workspace's items with the entry of `key`, once it proved intact. A damaged
        entry is dropped instead, with one warning, and the workspace is left as it was: False."""
        entry = self.entry(key)
        old = [home / name for name, home in context.items().items()]
        try:
            with opened_entry(entry) as archives:
                staging = await extract(archives, context)
        except DamagedEntry as damage:
            context.log.warning(
                f"stage-cache entry {entry} is damaged: {damage}; dropping it and building the stage again",
                key=key[:12],
            )
            await drop_entry(entry)
            self.dropped.append(key)
            return False
        await replace_items(context, old, staging)
        self.restored.append(key)
        context.log.info("restored from the stage cache", key=key[:12])
        return True

    async def store(self, key: str, context: Context) -> None:
        """The workspace's items as the entry of `key`, unless there is one: entries never change."""
        if self.has(key):
            return
        self._claim()
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp.{key}.", dir=self.directory))
        try:
            write_manifest(temporary, key, await archive(context, temporary))
            # An older mkosi's tree copy under the same key is not an entry: replace it.
            await remove_tree(self.entry(key))
            os.rename(temporary, self.entry(key))
        finally:
            await remove_tree(temporary)
        self.stored.append(key)
        context.log.info("stored in the stage cache", key=key[:12])
        await self._push(key, context)


async def prune(directory: Path, owner: str, keys: set[str], log: Any = None) -> None:
    """Forget what `owner` (one image's output path) used before, keeping `keys`, its latest entries.

    Each owner's keys are recorded in DIR/owners/; an entry is removed once no owner records it, so
    an incremental cache holds the latest entries of each image and does not grow with every build.
    An owner whose directory is gone (a project removed, a CI checkout thrown away) is forgotten: no
    build of it can come back for its entries. One whose image alone was removed (`mkosi clean`)
    keeps them.
    """
    owners = directory / OWNERS
    owners.mkdir(parents=True, exist_ok=True)
    async with concurrency.exclusive(directory / ".prune.lock"):
        record = owners / hashlib.sha256(owner.encode()).hexdigest()
        previous = _read_record(record)[1] if record.exists() else set()
        temporary = record.with_suffix(".tmp")
        temporary.write_text(f"{OWNER_LINE}{owner}\n" + "".join(f"{key}\n" for key in sorted(keys)))
        os.replace(temporary, record)
        still_used: set[str] = set()
        for other in (r for r in owners.iterdir() if r.suffix != ".tmp"):
            named, recorded = _read_record(other)
            if named is not None and not named.parent.exists():
                previous |= recorded
                other.unlink()
            else:
                still_used |= recorded
        for key in sorted(previous - still_used):
            await drop_entry(directory / key)
            if log is not None:
                log.info("dropped from the stage cache", key=key[:12])


# The first line of an owner's record names it; records of older versions have keys alone.
OWNER_LINE = "# owner: "


def _read_record(record: Path) -> tuple[Path | None, set[str]]:
    """The output an owner's record names (None in an older version's), and the keys it holds."""
    lines = [line for line in record.read_text().split("\n") if line]
    named = Path(lines[0].removeprefix(OWNER_LINE)) if lines and lines[0].startswith(OWNER_LINE) else None
    return named, {line for line in lines if not line.startswith("#")}


async def remove_cache(directory: Path) -> None:
    """Drop every entry; only when no build uses the cache (mkosi -ff)."""
    await remove_tree(directory)
