"""Insert and search of N unit vectors (64-d) in the candidate vector stores, each in a bounded run.

Usage: python benchmarks/vector_stores.py [--n 100000] [--queries 50] [--top 128] [--json OUT]
Candidates: faiss (flat, HNSW), usearch (HNSW), Milvus Lite (pymilvus MilvusClient on a local file),
Qdrant local mode (qdrant_client QdrantClient(path=...)). Recall@top is against exact (flat) search.
Search is one query at a time (an interactive search), timed in one block per store.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def recall(found: list[np.ndarray], exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact, strict=True)]))


def timed_search(search, queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    found, times = [], []
    search(queries[0])  # warm-up
    for q in queries:
        start = time.perf_counter()
        found.append(np.asarray(search(q)))
        times.append(time.perf_counter() - start)
    return found, times


def summary(name: str, insert_s: float, times: list[float], found, exact, **extra) -> dict:
    ms = np.array(times) * 1e3
    row = {"store": name, "insert_s": round(insert_s, 2), "search_p50_ms": round(float(np.median(ms)), 2),
           "search_p99_ms": round(float(np.percentile(ms, 99)), 2), "recall": round(recall(found, exact), 4), **extra}
    print(json.dumps(row), flush=True)
    return row


def run_faiss(vectors, queries, top, exact):
    import faiss

    faiss.omp_set_num_threads(2)
    rows = []
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    insert = time.perf_counter() - start
    found, times = timed_search(lambda q: flat.search(q[None], top)[1][0], queries)
    rows.append(summary("faiss Flat", insert, times, found, exact))
    for m, ef_build, ef_search in ((16, 64, 128), (32, 100, 256)):
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_build
        hnsw.add(vectors)
        insert = time.perf_counter() - start
        hnsw.hnsw.efSearch = ef_search
        found, times = timed_search(lambda q, h=hnsw: h.search(q[None], top)[1][0], queries)
        rows.append(summary("faiss HNSW", insert, times, found, exact, M=m, efConstruction=ef_build,
                            efSearch=ef_search))
    return rows


def run_usearch(vectors, queries, top, exact):
    from usearch.index import Index

    rows = []
    for connectivity, expansion_add, expansion_search in ((16, 64, 128), (32, 128, 256)):
        start = time.perf_counter()
        index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=connectivity,
                      expansion_add=expansion_add, expansion_search=expansion_search)
        index.add(np.arange(len(vectors)), vectors, threads=2)
        insert = time.perf_counter() - start
        found, times = timed_search(lambda q, i=index: i.search(q, top).keys, queries)
        rows.append(summary("usearch HNSW", insert, times, found, exact, connectivity=connectivity,
                            expansion_add=expansion_add, expansion_search=expansion_search))
    return rows


def run_milvus(vectors, queries, top, exact, workdir: Path, batch: int):
    from pymilvus import DataType, MilvusClient

    rows = []
    for index_type, params, search_params in (("FLAT", {}, {}),
                                              ("IVF_FLAT", {"nlist": 256}, {"nprobe": 16}),
                                              ("HNSW", {"M": 16, "efConstruction": 64}, {"ef": 128})):
        path = workdir / f"milvus-{index_type}.db"
        client = MilvusClient(str(path))
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type=index_type, metric_type="IP", params=params)
        try:
            client.create_collection("images", schema=schema, index_params=index_params)
        except Exception as exc:  # an index type Milvus Lite does not build
            print(json.dumps({"store": "Milvus Lite", "index": index_type, "error": str(exc)[:200]}), flush=True)
            client.close()
            continue
        start = time.perf_counter()
        for i in range(0, len(vectors), batch):
            ids = range(i, min(i + batch, len(vectors)))
            client.insert("images", [{"id": j, "vector": vectors[j].tolist()} for j in ids])
        client.flush("images")
        client.load_collection("images")
        insert = time.perf_counter() - start

        def search(q, c=client, sp=search_params):
            hits = c.search("images", [q.tolist()], limit=top, search_params={"metric_type": "IP", "params": sp})
            return [h["id"] for h in hits[0]]

        found, times = timed_search(search, queries)
        rows.append(summary("Milvus Lite", insert, times, found, exact, index=index_type, batch=batch, **params,
                            **search_params))
        client.close()
    return rows


def run_qdrant(vectors, queries, top, exact, workdir: Path, batch: int, in_memory: bool = False):
    """Local mode on disk, or ``in_memory`` (``location=":memory:"``: the same LocalCollection search code, no
    per-point sqlite commits, so search can be timed at sizes whose on-disk upload takes too long here)."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(location=":memory:") if in_memory else QdrantClient(path=str(workdir / "qdrant"))
    client.create_collection("images", vectors_config=models.VectorParams(size=vectors.shape[1],
                             distance=models.Distance.DOT),
                             hnsw_config=models.HnswConfigDiff(m=16, ef_construct=64))
    start = time.perf_counter()
    for i in range(0, len(vectors), batch):
        client.upsert("images", points=models.Batch(ids=list(range(i, min(i + batch, len(vectors)))),
                                                    vectors=vectors[i:i + batch].tolist()), wait=True)
    insert = time.perf_counter() - start

    def search(q):
        return [p.id for p in client.query_points("images", query=q.tolist(), limit=top).points]

    found, times = timed_search(search, queries)
    row = summary("Qdrant local" + (" (:memory:)" if in_memory else ""), insert, times, found, exact, batch=batch,
                  hnsw="m=16 ef_construct=64 (ignored "
                  "by local mode: brute force)")
    client.close()
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top", type=int, default=128)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--stores", default="faiss,usearch,milvus,qdrant",
                        help="comma-separated: faiss, usearch, milvus, qdrant, qdrant-memory")
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((args.n, args.dim)))
    queries = unit(rng.standard_normal((args.queries, args.dim)))
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :args.top]
    workdir = Path(tempfile.mkdtemp(prefix="vector-stores-"))
    rows = []
    try:
        for store in args.stores.split(","):
            if store == "faiss":
                rows += run_faiss(vectors, queries, args.top, exact)
            elif store == "usearch":
                rows += run_usearch(vectors, queries, args.top, exact)
            elif store == "milvus":
                rows += run_milvus(vectors, queries, args.top, exact, workdir, args.batch)
            elif store == "qdrant":
                rows += run_qdrant(vectors, queries, args.top, exact, workdir, args.batch)
            elif store == "qdrant-memory":
                rows += run_qdrant(vectors, queries, args.top, exact, workdir, args.batch, in_memory=True)
            sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir()
                     else p.stat().st_size for p in workdir.iterdir()}
            print(json.dumps({"on_disk_bytes": sizes}), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "dim": args.dim, "top": args.top, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
