"""Two-stage search past one machine: the first stage on a Qdrant server, the re-rank on Triton's ``match`` model.

    python examples/triton_search.py "a small red circle" --qdrant http://qdrant-host:6333 \\
        --regions INDEX/regions.sqlite --triton triton-host:8001 --top 10 --rerank 64

1. ``embed_text`` (Triton) turns the query into a unit vector;
2. Qdrant's ``query_points`` returns the ``rerank`` nearest images (the index's collection ``images``; the same
   qdrant-client call as the embedded store, with ``url=`` instead of ``path=``);
3. the candidates' region features come from the region store (keyed by content sha256, one read);
4. ``match`` (Triton) scores every (query, candidate) pair with the cross-attention ITM model.

The result is what ``Searcher(index).search(query, top, rerank)`` returns on one machine (tested in
tests/test_triton_match.py against the embedded store, ``--qdrant INDEX/vectors``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

COLLECTION = "images"  # fusionrt.search.store.COLLECTION


@dataclass(frozen=True)
class Hit:
    path: str
    sha256: str
    score: float


def embed_text(triton: Any, query: str) -> np.ndarray:
    """The query's unit embedding from the ``embed_text`` model (``triton``: a tritonclient.grpc client)."""
    import tritonclient.grpc as grpcclient

    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[query.encode()]], dtype=np.object_))
    return triton.infer("embed_text", [text]).as_numpy("embedding")[0]


def match_scores(triton: Any, query: str, regions: list[np.ndarray], max_batch: int = 64) -> np.ndarray:
    """ITM probability of ``query`` with each image given by its region features [n_i, Dv], from ``match``
    (one request per ``max_batch`` candidates: at most the model's max_batch_size)."""
    import tritonclient.grpc as grpcclient

    scores = []
    for start in range(0, len(regions), max_batch):
        chunk = regions[start:start + max_batch]
        width = max(len(r) for r in chunk)
        feats = np.zeros((len(chunk), width, chunk[0].shape[1]), dtype=np.float32)
        mask = np.zeros((len(chunk), width), dtype=bool)
        for row, r in enumerate(chunk):
            feats[row, : len(r)], mask[row, : len(r)] = r, True
        inputs = [grpcclient.InferInput("text", [len(chunk), 1], "BYTES"),
                  grpcclient.InferInput("visual_feats", list(feats.shape), "FP32"),
                  grpcclient.InferInput("visual_mask", list(mask.shape), "BOOL")]
        inputs[0].set_data_from_numpy(np.array([[query.encode()]] * len(chunk), dtype=np.object_))
        inputs[1].set_data_from_numpy(feats)
        inputs[2].set_data_from_numpy(mask)
        scores.append(triton.infer("match", inputs).as_numpy("score")[:, 0])
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def search(query: str, triton: Any, qdrant: Any, regions: Any, top: int = 10, rerank: int = 64) -> list[Hit]:
    """``triton``: tritonclient.grpc client; ``qdrant``: a ``QdrantClient`` (server URL or local path);
    ``regions``: a ``fusionrt.search.regions.RegionStore`` (``get(sha256s)`` -> features per image)."""
    vector = embed_text(triton, query)
    points = qdrant.query_points(COLLECTION, query=vector.tolist(), limit=max(top, rerank), with_payload=True).points
    candidates = [(p.payload["sha256"], p.payload["path"]) for p in points]
    if not rerank:
        return [Hit(path, sha, float(p.score)) for (sha, path), p in zip(candidates, points, strict=True)][:top]
    scores = match_scores(triton, query, regions.get([sha for sha, _ in candidates]))
    order = np.argsort(-scores, kind="stable")[:top]
    return [Hit(candidates[i][1], candidates[i][0], float(scores[i])) for i in order]


def main() -> None:
    import tritonclient.grpc as grpcclient
    from qdrant_client import QdrantClient

    from fusionrt.search.regions import RegionStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query")
    parser.add_argument("--qdrant", required=True, help="Qdrant server URL (http://host:6333) or a local INDEX/vectors")
    parser.add_argument("--regions", required=True, help="the index's regions.sqlite")
    parser.add_argument("--triton", default="localhost:8001", help="Triton gRPC address")
    parser.add_argument("--feature-dim", type=int, default=69)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--rerank", type=int, default=64)
    args = parser.parse_args()
    remote = args.qdrant.startswith(("http://", "https://"))
    qdrant = QdrantClient(url=args.qdrant) if remote else QdrantClient(path=args.qdrant)
    regions = RegionStore(args.regions, args.feature_dim)
    with grpcclient.InferenceServerClient(args.triton) as triton:
        for hit in search(args.query, triton, qdrant, regions, args.top, args.rerank):
            print(f"{hit.score:.4f}  {hit.path}")


if __name__ == "__main__":
    main()
