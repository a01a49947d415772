"""The vector store of an image index: Qdrant, through ``qdrant_client``.

One client API drives both deployments: ``QdrantClient(path=...)`` (local mode: embedded, on disk, one
process) and ``QdrantClient(url=...)`` (a Qdrant server or cluster). See the README ("Search") for the
measurements that chose it over Milvus Lite and a plain faiss/usearch index.

Points are keyed by the image's content sha256 (as a UUID), so an upsert of the same image is idempotent:
a crash and a rerun never duplicate a point. The payload holds ``sha256`` and ``path``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.errors import BackendError, InputError

COLLECTION = "images"
# Local mode without persistence (benchmarks and tests: the same search code, no per-point commits).
MEMORY = ":memory:"


class IndexBusyError(InputError):
    """Another client (another process, or another open index in this one) holds the local store."""


def point_id(sha256: str) -> str:
    """The point id of an image: its content sha256's first 128 bits as a UUID."""
    return str(uuid.UUID(sha256[:32]))


def _client(location: str | Path) -> Any:
    try:
        from qdrant_client import QdrantClient
    except ImportError as exc:
        raise BackendError("vector store", "qdrant-client installed (pip install 'fusionrt[search]')",
                           "no qdrant_client module") from exc
    text = str(location)
    if text == MEMORY:
        return QdrantClient(location=MEMORY)
    if text.startswith(("http://", "https://")):
        # No version check: the client runs it in a thread that warns after the fact (a line on stderr next to
        # our one-line error when no server answers); a server that does not answer, or answers in a way
        # this client cannot read, fails typed at our first request instead (VectorStore).
        return QdrantClient(url=text, check_compatibility=False)
    try:
        return QdrantClient(path=text)
    except RuntimeError as exc:  # the local mode locks its folder: one client (one process) at a time
        if "already accessed" not in str(exc):
            raise
        raise IndexBusyError("INDEX", "an index no other client has open (the embedded local mode admits one "
                                      "process at a time; a Qdrant server admits many)",
                             f"{text} is open elsewhere (`fusionrt index add` still running?)") from exc


def _tune_local_writes(client: Any) -> None:
    """Put the local mode's SQLite file in WAL mode with ``synchronous=NORMAL``.

    Why: the local mode commits every point in its own transaction, and SQLite's default rollback journal
    fsyncs each commit: measured 7 ms a point (140 points/s) on an idle disk, 46 points/s under load, which
    bounded ``index add``. In WAL mode with NORMAL a commit is an append to the log and fsyncs happen at
    checkpoints: about 4,400 points/s measured. A commit still survives kill -9 of the process (the log is
    in the OS's page cache); a power cut can lose the last commits but never corrupts the file, and the index
    tolerates a lost vector write anyway: region features are committed (synchronous=FULL) before the vector,
    and a rerun re-adds whatever has no point. Only the embedded local mode has this file; a server has its
    own WAL."""
    collections = getattr(getattr(client, "_client", None), "collections", {})
    for collection in collections.values():
        storage = getattr(getattr(collection, "storage", None), "storage", None)
        if storage is not None:  # None for the in-memory local mode
            storage.execute("PRAGMA journal_mode=WAL")
            storage.execute("PRAGMA synchronous=NORMAL")


class VectorStore:
    """Unit vectors of images with their sha256 and path, searched by dot product (cosine)."""

    def __init__(self, location: str | Path, dim: int, collection: str = COLLECTION) -> None:
        """``location``: a folder (the embedded local mode), ``":memory:"``, or a Qdrant server's URL;
        ``collection``: the collection holding this index's points (one per index on a shared server)."""
        from qdrant_client import models

        self.models = models
        self.collection = collection
        # The embedded local mode (on disk or in memory), not a server: decided by what was asked for.
        self.local = not str(location).startswith(("http://", "https://"))
        self.client = _client(location)
        self.dim = dim
        try:
            self._open_collection(dim)
        except Exception as exc:
            self.client.close()
            from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

            if isinstance(exc, ResponseHandlingException | UnexpectedResponse):  # a server that is not there
                raise BackendError("vector store", f"a Qdrant server answering at {location}",
                                   f"{type(exc).__name__}: {exc}") from exc
            raise

    def _open_collection(self, dim: int) -> None:
        models = self.models
        if not self.client.collection_exists(self.collection):
            # For a server: float32 vectors in RAM (64-d: 256 B a point) for its HNSW, payloads (sha256, path)
            # on disk since only the top k's are read, and the HNSW graph built once 20k points are in rather
            # than re-built while a bulk add is still streaming in. The local mode ignores all three.
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT,
                                                   datatype=models.Datatype.FLOAT32),
                on_disk_payload=True,
                optimizers_config=models.OptimizersConfigDiff(indexing_threshold=20_000))
        _tune_local_writes(self.client)

    def upsert(self, sha256s: list[str], paths: list[str], vectors: np.ndarray, wait: bool = True) -> None:
        """Insert or replace one point per image, all in one call.

        ``wait=False`` (a server only; the local mode always writes before it returns): the server answers
        once the batch is in its write-ahead log ("acknowledged"), so it is durable and applied in order, but
        a search may not see it yet. A bulk add waits on its last batch only."""
        if not sha256s:
            return
        self.client.upsert(self.collection, wait=wait, points=self.models.Batch(
            ids=[point_id(s) for s in sha256s], vectors=np.asarray(vectors, dtype=np.float32).tolist(),
            payloads=[{"sha256": s, "path": p} for s, p in zip(sha256s, paths, strict=True)]))

    def delete(self, sha256s: list[str]) -> None:
        if sha256s:
            self.client.delete(self.collection, points_selector=self.models.PointIdsList(
                points=[point_id(s) for s in sha256s]), wait=True)

    def payloads(self) -> list[dict[str, str]]:
        """The payload (sha256, path) of every point."""
        out, offset = [], None
        while True:
            points, offset = self.client.scroll(self.collection, limit=4096, offset=offset, with_payload=True,
                                                with_vectors=False)
            out += [dict(p.payload) for p in points]
            if offset is None:
                return out

    def snapshot(self) -> tuple[list[str], list[str], np.ndarray]:
        """Every point's sha256 and path, and the vectors float32 [N, dim], in one read."""
        shas, paths, vectors, offset = [], [], [], None
        while True:
            points, offset = self.client.scroll(self.collection, limit=4096, offset=offset, with_payload=True,
                                                with_vectors=True)
            for p in points:
                shas.append(p.payload["sha256"])
                paths.append(p.payload["path"])
                vectors.append(p.vector)
            if offset is None:
                return shas, paths, np.asarray(vectors, dtype=np.float32).reshape(len(shas), self.dim)

    def search(self, vector: np.ndarray, top: int) -> list[tuple[str, str, float]]:
        """The ``top`` nearest images: (sha256, path, cosine), best first."""
        points = self.client.query_points(self.collection, query=np.asarray(vector, dtype=np.float32).tolist(),
                                          limit=top, with_payload=True).points
        return [(p.payload["sha256"], p.payload["path"], float(p.score)) for p in points]

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self.client.close()


class MemoryFirstStage:
    """Exact cosine search over a snapshot of the store's vectors, in process (numpy).

    Why: the embedded local mode scores every point in Python (measured 144 ms per query at 100k points on the
    loaded 2-core machine; Qdrant itself warns against local mode past 20k points), while one matrix-vector
    product over the same vectors takes a few ms. The store stays the record (crash-safe writes, sha256 keys,
    the server's HNSW when it is a server); this is a read-side copy taken when a Searcher opens."""

    def __init__(self, store: VectorStore) -> None:
        self.sha256s, self.paths, self.vectors = store.snapshot()

    def search(self, vector: np.ndarray, top: int) -> list[tuple[str, str, float]]:
        # einsum's own loop, not BLAS: a threaded gemv spins its threads on a busy machine (measured 8 ms of
        # CPU for 10k vectors vs well under 1 ms in one thread).
        scores = np.einsum("nd,d->n", self.vectors, np.asarray(vector, dtype=np.float32))
        top = min(top, len(scores))
        best = np.argpartition(-scores, top - 1)[:top] if top < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(self.sha256s[i], self.paths[i], float(scores[i])) for i in best]
