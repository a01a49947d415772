"""Region features of indexed images, keyed by content sha256, in SQLite beside the vector store.

Why a side store and not the vector payload: the re-rank reads the features of only the k candidates of a
query, by key, while a vector database keeps payloads in memory with every point and serialises them per
point (Qdrant's local mode pickles each point), so ~1-2 KB of features per image would multiply its memory
and upload cost. SQLite gives transactions (a batch is committed whole or not at all), and in a
distributed deployment the table moves to any key-value store beside the re-ranker.
Features are stored as float16 (the re-rank's fp32 inputs are the float16 values, measured within budget).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from fusionrt.errors import InputError


class RegionStore:
    """``sha256 -> float16 [n, Dv]`` region features, and the index's metadata (``meta`` key/value)."""

    def __init__(self, path: str | Path, feature_dim: int) -> None:
        self.feature_dim = feature_dim
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS regions (sha256 TEXT PRIMARY KEY, count INTEGER, feats BLOB)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.commit()

    def put(self, items: dict[str, np.ndarray]) -> None:
        """Store the features of several images in one transaction."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO regions VALUES (?, ?, ?)", [
                (sha, int(f.shape[0]), np.ascontiguousarray(f, dtype=np.float16).tobytes())
                for sha, f in items.items()])

    def get(self, sha256s: list[str]) -> list[np.ndarray]:
        """float32 [n_i, Dv] per sha256, in order; a missing key is an error naming it."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(sha256s), 500):
            chunk = sha256s[start:start + 500]
            rows = self.db.execute(f"SELECT sha256, count, feats FROM regions WHERE sha256 IN "
                                   f"({','.join('?' * len(chunk))})", chunk).fetchall()
            for sha, count, blob in rows:
                found[sha] = np.frombuffer(blob, dtype=np.float16).reshape(count, self.feature_dim).astype(np.float32)
        missing = [s for s in sha256s if s not in found]
        if missing:
            raise InputError("index", "region features for every indexed image", f"none for {missing[0][:12]}...")
        return [found[s] for s in sha256s]

    def keys(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT sha256 FROM regions")}

    def delete(self, sha256s: list[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM regions WHERE sha256 = ?", [(s,) for s in sha256s])

    def bytes_on_disk(self) -> int:
        page_count = self.db.execute("PRAGMA page_count").fetchone()[0]
        return int(page_count * self.db.execute("PRAGMA page_size").fetchone()[0])

    def close(self) -> None:
        self.db.close()
