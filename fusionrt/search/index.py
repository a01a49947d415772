"""An image index: a directory holding ``index.json`` (the model it was built with), the vector store
(``vectors/``, Qdrant local mode, or a Qdrant server's URL recorded in ``index.json``) and the region store
(``regions.sqlite``).

Writes are crash-safe by order and idempotence: per batch, region features are committed first, then the
vectors are upserted under ids derived from the content sha256 (so a rerun replaces, never duplicates), and
only then is the old point of a changed file deleted. :meth:`ImageIndex.add` starts by reconciling what an
interrupted run left: a path held by two points keeps the one matching the file's current content.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.images import load_image
from fusionrt.errors import ImageError, InputError
from fusionrt.io import atomic_write_json
from fusionrt.progress import SILENT, Progress
from fusionrt.search.encode import ImageEncoder
from fusionrt.search.regions import RegionStore
from fusionrt.search.store import COLLECTION, MEMORY, VectorStore

INDEX_FORMAT = "fusionrt-image-index"
INDEX_FILE = "index.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ModelMismatchError(InputError):
    """The index was built with another model than the one asked to query it."""


def model_hash(bundle: Bundle) -> str:
    """The identity of a match bundle's model: sha256 of its source weights' hashes (every precision and backend
    of one model shares it; another model's does not)."""
    weights = bundle.manifest.get("source", {}).get("weights_sha256")
    if not isinstance(weights, dict) or not weights:
        raise InputError("bundle", "a match bundle whose manifest records source.weights_sha256", repr(weights))
    return hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class AddReport:
    """What one ``add`` did."""

    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    reconciled: int = 0
    seconds: float = 0.0
    # Files that are not readable scene images (path -> why): left out, the rest indexed; retried next add.
    skipped: dict[str, str] = field(default_factory=dict)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("index", f"an {INDEX_FORMAT} directory", f"{path} is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or not isinstance(meta.get("vectors"), str):
        raise InputError("index", f"an {INDEX_FORMAT} directory", f"{path} of format "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
    return meta


def image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise InputError("DIR", "a directory of images", f"no directory at {directory}")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageIndex:
    """Open (or create) the index at ``path`` for the match bundle ``bundle``; refuses another model's index."""

    def __init__(self, path: str | Path, bundle: Bundle, *, vectors: str | None = None, create: bool = True) -> None:
        """``vectors``: where a new index keeps its vectors: a Qdrant server's ``http(s)://`` URL, or None for
        the embedded local mode in ``path/vectors`` (``":memory:"``: in memory, for benchmarks)."""
        if bundle.task != "match":
            raise InputError("bundle", "a bundle with task 'match'", f"task {bundle.task!r} at {bundle.path}")
        if vectors is not None and not str(vectors).startswith(("http://", "https://", MEMORY)):
            raise InputError("--vectors", "a Qdrant server URL (http:// or https://)", repr(vectors))
        self.path = Path(path)
        self.bundle = bundle
        meta_path = self.path / INDEX_FILE
        expected = model_hash(bundle)
        new = not meta_path.is_file()
        if not new:
            self.meta = _read_meta(meta_path)
            if self.meta.get("model_sha256") != expected:
                raise ModelMismatchError(
                    "index", f"an index built with this bundle's model (model sha256 {expected[:12]}...)",
                    f"{self.path} built with model {str(self.meta.get('model_sha256'))[:12]}...")
            if vectors is not None and vectors != self.meta["vectors"]:
                raise InputError("--vectors", f"none, or the store {self.path} was built on "
                                 f"({self.meta['vectors']})", repr(vectors))
        elif create:
            self.meta = {"format": INDEX_FORMAT, "model_sha256": expected,
                         "embed_dim": int(bundle.model["embed_dim"]), "feature_dim": int(bundle.model["visual_dim"]),
                         "vectors": vectors or "vectors"}
            if vectors is not None and vectors != MEMORY:
                # A server holds many indexes: each its own collection, named once and recorded here.
                self.meta["collection"] = f"fusionrt-images-{uuid.uuid4().hex[:16]}"
        else:
            raise InputError("INDEX", "an index directory written by `fusionrt index add`", f"nothing at {self.path}")
        created = new and not self.path.exists()
        location = self.meta["vectors"]
        local = not str(location).startswith(("http://", "https://", MEMORY))
        try:
            if new:
                self.path.mkdir(parents=True, exist_ok=True)
            self.vectors = VectorStore(self.path / location if local else location, int(self.meta["embed_dim"]),
                                       self.meta.get("collection", COLLECTION))
            self.regions = RegionStore(self.path / "regions.sqlite", int(self.meta["feature_dim"]))
        except BaseException:
            if created:  # a store that could not be opened leaves no half-made index behind
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        if new:  # written last: a directory with index.json is an index whose stores opened
            atomic_write_json(meta_path, self.meta)

    def entries(self) -> dict[str, list[str]]:
        """path -> sha256s of the points holding it (more than one only after an interrupted replace)."""
        out: dict[str, list[str]] = {}
        for payload in self.vectors.payloads():
            out.setdefault(payload["path"], []).append(payload["sha256"])
        return out

    def add(self, directory: str | Path, encoder: ImageEncoder, batch: int = 256,
            progress: Progress = SILENT) -> AddReport:
        """Index every image under ``directory``: new content is encoded, unchanged content skipped, a changed
        file re-encoded and its old point removed."""
        import time

        started = time.perf_counter()
        report = AddReport()
        entries = self.entries()
        files = image_files(Path(directory))
        current = {}
        for file in files:
            try:
                current[str(file.resolve())] = file_sha256(file)
            except OSError as exc:  # unreadable (permissions, vanished): left out like an undecodable image
                report.skipped[str(file.resolve())] = f"cannot read the file ({exc.strerror or exc})"
        report.reconciled = self._reconcile(entries, current)
        entries = self.entries() if report.reconciled else entries
        held = {sha for shas in entries.values() for sha in shas}
        todo = [(path, sha) for path, sha in current.items() if sha not in held]
        report.unchanged = len(current) - len(todo)
        chunks, unapplied = list(_chunks(todo, batch)), None
        for number, chunk in enumerate(progress.iterate(chunks, "index", unit="batch")):
            chunk, pixels = self._readable(chunk, report)
            if not chunk:
                continue
            encoded = encoder.encode(pixels)
            self.regions.put({sha: r for (_, sha), r in zip(chunk, encoded.regions, strict=True)})
            # A server need not apply each batch before the next is encoded (it is durable once acknowledged);
            # the last is waited for, so the index is searchable as added when add returns.
            written = ([sha for _, sha in chunk], [path for path, _ in chunk], encoded.embeddings)
            last = number == len(chunks) - 1
            self.vectors.upsert(*written, wait=last)
            unapplied = None if last else written
            stale = [old for path, _ in chunk for old in entries.get(path, [])]
            report.replaced += len({path for path, _ in chunk if entries.get(path)})
            self._drop(stale)
            report.added += len(chunk)
        if unapplied is not None and not self.vectors.local:  # the last batch was all unreadable files
            self.vectors.upsert(*unapplied, wait=True)  # the same points again (idempotent), waited for
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    @staticmethod
    def _readable(chunk: list[tuple[str, str]], report: AddReport) -> tuple[list[tuple[str, str]], list]:
        """The files of ``chunk`` that decode as scene images, with their pixels; the others go to
        ``report.skipped``. Why not fail the add: one truncated file among thousands should not stop the rest."""
        kept, pixels = [], []
        for path, sha in chunk:
            try:
                pixels.append(load_image(path))
            except ImageError as exc:
                report.skipped[path] = str(exc)
                continue
            kept.append((path, sha))
        return kept, pixels

    def _reconcile(self, entries: dict[str, list[str]], current: dict[str, str]) -> int:
        """Points an interrupted replace left: a path held by several points keeps only its current content's."""
        stale = [sha for path, shas in entries.items() if len(shas) > 1 and path in current
                 for sha in shas if sha != current[path]]
        self._drop(stale)
        return len(stale)

    def _drop(self, sha256s: list[str]) -> None:
        self.vectors.delete(sha256s)
        self.regions.delete(sha256s)

    def remove(self, paths: list[str | Path]) -> int:
        """Drop the images at ``paths`` (as indexed: resolved paths); return how many points went."""
        entries = self.entries()
        wanted = [str(Path(p).resolve()) for p in paths]
        missing = [p for p in wanted if p not in entries]
        if missing:
            raise InputError("PATH", "an indexed image path", f"{missing[0]} is not in {self.path}")
        stale = [sha for p in wanted for sha in entries[p]]
        self._drop(stale)
        return len(stale)

    def __len__(self) -> int:
        return self.vectors.count()

    def close(self) -> None:
        self.vectors.close()
        self.regions.close()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
