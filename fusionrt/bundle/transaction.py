"""Crash-safe, exclusive updates of a bundle: every change is published by one rename of ``manifest.json``.

A reader (:meth:`Bundle.open`, in any process) sees the files the manifest it read lists. So an update
never rewrites a file the current manifest lists: new artifacts get a fresh name (their own name when
it is free, else ``stem.<token>.ext``), are written and fsync'ed, and only then does the new manifest
replace the old one in one ``os.replace``. Afterwards the files no manifest lists any more are
removed, and fresh names are brought back to their own names by a hard link plus a second manifest
rename, so the steady state keeps stable names (``fusion.fp16.onnx``) for tools that expect them.

A SIGKILL at any point leaves the previous manifest or the new one in place, each with all its files:
the names a transaction creates are journalled in ``.fusionrt-pending.json`` first, and the next
transaction removes those the live manifest does not list. Writers hold an ``fcntl`` lock on
``.fusionrt.lock`` (removed when the update ends) for the whole update, so two writers never
interleave; a second one waits up to ``timeout`` seconds, then raises :class:`BundleLockedError`.

Fault injection for the crash tests: ``FUSIONRT_FAULT_POINT=<point>`` SIGKILLs the process at the named
point (see :data:`FAULT_POINTS`), ``FUSIONRT_FAULT_POINT=<point>:sleep`` sleeps there instead.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import MANIFEST, Bundle, is_bundle_file_name, read_manifest, sha256_file
from fusionrt.errors import BundleError
from fusionrt.io import atomic_write_json

LOCK_FILE = ".fusionrt.lock"
JOURNAL_FILE = ".fusionrt-pending.json"
DEFAULT_LOCK_TIMEOUT = 600.0
FAULT_POINTS = ("files-written", "manifest-published", "garbage-collected", "names-linked", "names-published")
# Leftovers of writers that died: atomic_path temp files and staging directories inside the bundle.
_STALE_PREFIXES = (".quantize-", ".stage-")


class BundleLockedError(BundleError):
    """Another process is updating the bundle and did not finish within the timeout."""


def fault_point(name: str) -> None:
    """Kill (or pause) this process here if ``FUSIONRT_FAULT_POINT`` names this point (crash tests only)."""
    wanted = os.environ.get("FUSIONRT_FAULT_POINT", "")
    if not wanted or wanted.split(":")[0] != name:
        return
    if wanted.endswith(":sleep"):
        time.sleep(float(os.environ.get("FUSIONRT_FAULT_SLEEP", "30")))
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest's ``files`` entry of ``path``: sha256 and size."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fresh_name(directory: Path, name: str, taken: Iterable[str]) -> str:
    if name not in taken and not (directory / name).exists():
        return name
    stem, dot, ext = name.partition(".")
    while True:
        candidate = f"{stem}.{secrets.token_hex(4)}{dot}{ext}"
        if not (directory / candidate).exists():
            return candidate


class BundleTransaction:
    """``with BundleTransaction(bundle_dir) as tx: path = tx.new_file("fusion.fp16.onnx"); ...; tx.commit(...)``.

    Entering takes the bundle's lock, cleans what a crashed writer left, and opens (and verifies) the
    bundle as :attr:`bundle`. Leaving without :meth:`commit` removes the files created and changes nothing.
    """

    def __init__(self, bundle_dir: str | Path, *, timeout: float = DEFAULT_LOCK_TIMEOUT, verify: bool = True) -> None:
        self.path = Path(bundle_dir)
        self.timeout = timeout
        self._verify = verify
        self._lock_fd: int | None = None
        self._created: dict[str, str] = {}  # own name -> name on disk
        self._journalled: set[str] = set()  # every other name this update may leave behind
        self.bundle: Bundle | None = None
        self.committed = False

    # -- lock -------------------------------------------------------------------------------------
    def __enter__(self) -> BundleTransaction:
        read_manifest(self.path)  # a clear BundleError for a directory that is not a bundle
        self._lock()
        try:
            self._recover()
            self.bundle = Bundle.open(self.path, verify=self._verify)
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.committed:
                for name in self._created.values():
                    (self.path / name).unlink(missing_ok=True)
                (self.path / JOURNAL_FILE).unlink(missing_ok=True)
        finally:
            self._unlock()

    def _lock(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise BundleError(str(self.path), "a bundle directory this process may write to",
                                  f"{type(exc).__name__}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise BundleLockedError(
                        str(self.path), f"no other writer, or one that finishes within {self.timeout:g} s",
                        f"an update in progress by process {holder} (lock {LOCK_FILE})") from None
                time.sleep(0.05)
                continue
            # The holder removes the lock file when done; a lock taken on a removed file is no lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path / LOCK_FILE).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            # Unlink while still holding the lock, so the bundle keeps no stray file between updates.
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- crash recovery and garbage collection ----------------------------------------------------
    def _live_files(self) -> set[str]:
        return set(read_manifest(self.path)["files"])

    def _recover(self) -> None:
        """Remove what a writer that died left behind (we hold the lock, so none is running)."""
        journal = self.path / JOURNAL_FILE
        if journal.exists():
            try:
                pending = json.loads(journal.read_text())
            except (OSError, ValueError):
                pending = []
            live = self._live_files()
            for name in pending if isinstance(pending, list) else []:
                if isinstance(name, str) and is_bundle_file_name(name) and name not in live:
                    (self.path / name).unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
        live = read_manifest(self.path)
        renamed = {entry["logical"]: name for name, entry in live["files"].items()
                   if isinstance(entry.get("logical"), str)}
        if renamed:  # a writer died before giving fresh names back
            self._restore_names(live, renamed)
            (self.path / JOURNAL_FILE).unlink(missing_ok=True)
        for child in self.path.iterdir():
            if child.name.startswith(_STALE_PREFIXES) and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            elif child.name.startswith(".") and child.name.endswith(".tmp") and child.is_file():
                child.unlink(missing_ok=True)

    def _journal(self, *names: str) -> None:
        # Written before the files exist, so a crash can never leave an unlisted orphan.
        # Accumulated: restoring two own names journals twice, and the first link must stay journalled.
        self._journalled.update(names)
        atomic_write_json(self.path / JOURNAL_FILE, sorted({*self._created.values(), *self._journalled}))

    # -- building the update ----------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as read under the lock (a copy: change it through :meth:`commit`)."""
        assert self.bundle is not None, "use BundleTransaction as a context manager"
        return copy.deepcopy(self.bundle.manifest)

    def new_file(self, name: str) -> Path:
        """A path to write the new version of bundle file ``name`` to (registered at :meth:`commit`): a plain
        name, or ``engines/<plain name>`` for a TensorRT plan."""
        if self._lock_fd is None:
            raise RuntimeError("BundleTransaction.new_file outside its `with` block")
        leaf = name.rpartition("/")[2]
        if not is_bundle_file_name(name) or name in (LOCK_FILE, JOURNAL_FILE) or leaf.startswith("."):
            raise BundleError("bundle file name", "a plain, visible file name inside the bundle (or engines/NAME)",
                              repr(name))
        if name in self._created:
            return self.path / self._created[name]
        folder = name.rpartition("/")[0]
        (self.path / folder).mkdir(exist_ok=True)
        taken = {n.rpartition("/")[2] for n in self._live_files() | set(self._created.values())
                 if n.rpartition("/")[0] == folder}
        on_disk = "/".join(filter(None, (folder, _fresh_name(self.path / folder, leaf, taken))))
        self._journal(on_disk)
        self._created[name] = on_disk
        return self.path / on_disk

    def adopt(self, source: str | Path, name: str) -> Path:
        """Move the finished file ``source`` (same file system) into the bundle as the new ``name``."""
        target = self.new_file(name)
        os.replace(source, target)
        return target

    def commit(self, *, files: Iterable[str] = (), precisions: Mapping[str, Mapping[str, str]] | None = None,
               sections: Mapping[str, Any] | None = None, manifest: Mapping[str, Any] | None = None) -> Bundle:
        """Publish: the files from :meth:`new_file` / :meth:`adopt`, plus ``files`` (names already in the
        bundle, re-hashed), ``precisions`` (graph -> precision -> file name) and top-level ``sections``.
        ``manifest``: start from this manifest instead of the current one (a whole new bundle, for export).
        Returns the bundle as published (its manifest re-read; see below for why it is not re-hashed)."""
        if self._lock_fd is None or self.committed:
            raise RuntimeError("BundleTransaction.commit outside its `with` block or twice")
        old = self.manifest
        new = copy.deepcopy(dict(manifest)) if manifest is not None else copy.deepcopy(old)
        new.setdefault("files", {})
        if manifest is not None:
            new["files"] = {}
        for name in files:
            if not is_bundle_file_name(name) or not (self.path / name).is_file():
                raise BundleError(f"{MANIFEST} files", "names of files inside the bundle", repr(name))
            new["files"][name] = file_entry(self.path / name)
        for name, on_disk in self._created.items():
            path = self.path / on_disk
            if not path.is_file():
                raise BundleError(name, f"a file written at {path} before commit", "nothing")
            for key, entry in list(new["files"].items()):
                if key == name or entry.get("logical") == name:
                    del new["files"][key]
            new["files"][on_disk] = {**file_entry(path), **({"logical": name} if on_disk != name else {})}
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        renamed = {name: on_disk for name, on_disk in self._created.items() if on_disk != name}
        for graph, entries in (precisions or {}).items():
            if graph not in new.get("graphs", {}):
                raise BundleError("precisions", f"a graph of the bundle {sorted(new.get('graphs', {}))}", repr(graph))
            new["graphs"][graph].setdefault("precisions", {}).update(entries)
        for key, value in (sections or {}).items():
            new[key] = value
        for graph in new.get("graphs", {}).values():
            graph["precisions"] = {p: renamed.get(f, f) for p, f in graph.get("precisions", {}).items()}
        # The files the new manifest drops are journalled too: if we die right after publishing, the
        # next writer removes them (they are no longer listed) instead of keeping them forever.
        self._journal(*(set(old.get("files", {})) - set(new["files"])))
        _fsync_dir(self.path)
        fault_point("files-written")
        self._publish(new)
        fault_point("manifest-published")
        self.committed = True
        self._collect(old, new)
        fault_point("garbage-collected")
        self._restore_names(new, renamed)
        (self.path / JOURNAL_FILE).unlink(missing_ok=True)
        # Not re-hashed: every file it lists was hashed on the way in (new files) or when the transaction
        # began (verify=True), and nobody else writes while we hold the lock.
        self.bundle = Bundle.open(self.path, verify=False)
        return self.bundle

    def _publish(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.path / MANIFEST, manifest)
        _fsync_dir(self.path)

    def _collect(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        for name in set(old.get("files", {})) - set(new["files"]):
            if is_bundle_file_name(name):
                (self.path / name).unlink(missing_ok=True)

    def _restore_names(self, manifest: dict[str, Any], renamed: dict[str, str]) -> None:
        """Give freshly named files their own names back: link, publish, unlink (each step crash-safe)."""
        back = {}
        for name, on_disk in renamed.items():
            if not is_bundle_file_name(name) or name.rpartition("/")[2].startswith(".") or (self.path / name).exists():
                continue  # a file no manifest lists but not ours to remove: keep the fresh name
            self._journal(name)
            try:
                os.link(self.path / on_disk, self.path / name)
            except OSError:
                continue  # a file system without hard links keeps fresh names; readers resolve them
            back[on_disk] = name
        if not back:
            return
        fault_point("names-linked")
        final = copy.deepcopy(manifest)
        final["files"] = {back.get(k, k): {f: v for f, v in entry.items() if not (k in back and f == "logical")}
                          for k, entry in manifest["files"].items()}
        for graph in final.get("graphs", {}).values():
            graph["precisions"] = {p: back.get(f, f) for p, f in graph.get("precisions", {}).items()}
        self._publish(final)
        fault_point("names-published")
        for on_disk in back:
            (self.path / on_disk).unlink(missing_ok=True)


def update_manifest(bundle_dir: str | Path, *, files: Sequence[str] = (),
                    precisions: Mapping[str, Mapping[str, str]] | None = None,
                    sections: Mapping[str, Any] | None = None) -> Bundle:
    """Register ``files`` (plain names inside the bundle), ``precisions`` (graph -> precision -> file) and
    top-level ``sections``; publish ``manifest.json`` atomically under the bundle's lock and return the
    re-opened bundle. The bundle is not re-verified before the update (the listed files may just have
    been rewritten in place by the caller); the returned bundle is."""
    with BundleTransaction(bundle_dir, verify=False) as tx:
        return tx.commit(files=files, precisions=precisions, sections=sections)
