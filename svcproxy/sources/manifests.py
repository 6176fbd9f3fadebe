"""The manifests source: Service, EndpointSlice and Node objects from files and directories.

Takes paths as `svcproxy render -f` does, and watches them (watchfiles/inotify): a new,
edited or removed file reaches the store within tens of milliseconds. A file that no longer
parses, or an object in it that became invalid, is reported and its last good version is kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..gcpause import gc_paused
from ..model.load import MANIFEST_SUFFIXES, manifest_files, raw_objects, read_file
from ..model.parse import PARSERS, ObjectError
from .store import Obj, ObjectStore, key_of, kind_of

log = logging.getLogger("svcproxy.sources.manifests")


@dataclass
class _File:
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns): re-read only when it moves
    objects: list[Obj] = field(default_factory=list)  # last good objects of this file
    errors: list[str] = field(default_factory=list)  # what its last read could not use


def parse_file(path: Path, previous: list[Obj]) -> tuple[list[Obj], list[str]]:
    """The objects of one file, and error messages. Keeps the last good version of bad objects."""
    docs, errors = read_file(path)
    if errors and not docs:
        return previous, [f"{e}; keeping its last good objects" for e in errors]
    old = {(kind_of(o), key_of(o)): o for o in previous}
    objects: list[Obj] = []
    with gc_paused():
        for where, raw in raw_objects(docs):
            parser = PARSERS.get(raw.get("kind", ""))
            if parser is None:
                continue
            try:
                objects.append(parser(raw))
            except ObjectError as e:
                kept = old.get((e.kind, _object_key(e)))
                if kept is not None:
                    objects.append(kept)
                errors.append(f"{path}: {where}: {e}"
                              + ("; keeping its last good version" if kept is not None else "; skipped"))
    return objects, errors


def _object_key(e: ObjectError) -> str:
    """The store key of the object an ObjectError is about (namespace defaults to "default")."""
    if e.kind == "Node" or "/" in e.ref:
        return e.ref
    return f"default/{e.ref}"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ManifestSource:
    """Files and directories of manifests, loaded once and then followed."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], name: str = "manifests") -> None:
        self.name = name
        self.paths = [Path(p) for p in paths]
        self.files: dict[Path, _File] = {}
        manifest_files(self.paths)  # fail fast on a path that is not there

    def scan(self) -> tuple[list[Obj], list[str], bool]:
        """Re-read files that changed: (all objects, new errors, whether anything changed)."""
        try:
            current = manifest_files(self.paths)
        except FileNotFoundError as e:
            # A watched file or directory was removed: it simply holds no objects now.
            log.warning("%s", e)
            current = [f for f in _existing_files(self.paths)]
        changed = False
        errors: list[str] = []
        for gone in set(self.files) - set(current):
            del self.files[gone]
            changed = True
        for path in current:
            stamp = _stamp(path)
            if stamp is None:
                continue
            known = self.files.get(path)
            if known is not None and known.stamp == stamp:
                continue
            objects, errs = parse_file(path, known.objects if known else [])
            errors += errs
            self.files[path] = _File(stamp, objects, errs)
            changed = True
        merged: dict[tuple[str, str], Obj] = {}
        for path in sorted(self.files):
            for o in self.files[path].objects:
                merged[(kind_of(o), key_of(o))] = o  # a later file wins, as in `render`
        return list(merged.values()), errors, changed

    def load(self, store: ObjectStore) -> None:
        objects, errors, changed = self.scan()
        for e in errors:
            log.error("%s", e)
        if changed:
            store.replace(self.name, objects)
        store.report(self.name, {e: e for f in self.files.values() for e in f.errors})

    async def run(self, store: ObjectStore) -> None:
        store.add_source(self.name)
        self.load(store)
        store.mark_synced(self.name)
        log.info("manifests: %d file(s) loaded from %s", len(self.files), ", ".join(map(str, self.paths)))
        # Directories are watched recursively; for a file, its directory (not recursively), so
        # editors that write a new file and rename it over the old one are seen too.
        dirs = sorted({str(p) for p in self.paths if p.is_dir()})
        parents = sorted({str(p.parent) for p in self.paths if not p.is_dir()} - set(dirs))
        wake = asyncio.Event()
        files = {str(p.absolute()) for p in self.paths if not p.is_dir()}
        watchers = [asyncio.create_task(_watch(group, recursive, wake, files))
                    for group, recursive in ((dirs, True), (parents, False)) if group]
        try:
            while True:
                await wake.wait()
                wake.clear()
                self.load(store)
        finally:
            for w in watchers:
                w.cancel()


def relevant(path: str, files: set[str]) -> bool:
    """Whether a change under a watched directory may change what we load. Only a regular
    file that is neither a manifest nor a file given with -f is left out: a log written next
    to the manifests would otherwise wake the source for nothing, each wake-up's log line a
    new change, without end. Directories, symlinks and removed paths always count (a
    ConfigMap volume updates by swapping its `..data` symlink)."""
    p = Path(path)
    if p.suffix in MANIFEST_SUFFIXES or str(p.absolute()) in files:
        return True
    return p.is_symlink() or not p.is_file()


async def _watch(paths: list[str], recursive: bool, wake: asyncio.Event, files: set[str]) -> None:
    import watchfiles

    async for _ in watchfiles.awatch(*paths, debounce=400, step=20, recursive=recursive,
                                     watch_filter=lambda _change, path: relevant(path, files),
                                     ignore_permission_denied=True):
        wake.set()


def _existing_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.exists():
            out += manifest_files([p])
    return out
