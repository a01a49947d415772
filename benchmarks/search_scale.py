"""Search at scale: query latency (p50, p99) and queries/s of two-stage retrieval (vector search, then ITM
re-rank of the top k) and of exhaustive ITM, at N indexed images; indexing throughput and bytes per image.

Usage (the RESULTS.md run; about 3 minutes on an idle 2-core machine, most of it exhaustive ITM):
    python benchmarks/search_scale.py --json benchmarks/search_scale.json --plot benchmarks/search_latency_vs_n.png
Options: [--sizes 1000,5000,10000,100000] [--real 5000] [--queries 30] [--rerank 128] [--exhaustive-queries 30]
       [--exhaustive-rows 200000] [--index-images 1000] [--store-queries 10]
Exhaustive ITM runs min(--exhaustive-queries, --exhaustive-rows / N) queries (at least one) per size, so its
cost is bounded by about --exhaustive-rows fusion rows per size whatever N is.

Also measured: ``index add`` end to end on --index-images PNG files (images/s, bytes on disk per image);
the two-stage query's parts (text embedding, first stage, region feature fetch, ITM re-rank); nDCG@10 of
two-stage and exhaustive ITM on the same queries at every N <= --real (all images real).

The first ``--real`` images are held-out scenes indexed for real (detection, region encoding, image
embedding through the runtime). Past that, images are synthesised from the real ones: a real image's
embedding plus Gaussian noise (renormalised) and the same image's region features, so the vector search
and the ITM cost per row are those of real data; relevance (nDCG@10) is only defined on the real part.
Two-stage runs the first stage in process over the store's vectors (the Searcher's default for the local
mode); the store's own search is timed too. The vector store is Qdrant's local mode in memory (``:memory:``:
the on-disk local mode runs the same search code, but its per-point commits make a 100k upload take many
minutes here); region features in SQLite.
Each mode is timed in one block of consecutive queries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.matching import heldout_database
from fusionrt.data.world import generate_scene, render
from fusionrt.search.encode import ImageEncoder
from fusionrt.search.index import ImageIndex
from fusionrt.search.metrics import mean_ndcg
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE, Searcher
from fusionrt.search.store import MEMORY

# One ORT thread per session: no worker threads spinning between calls, so CPU time is honest.
THREADS = 1


class Clock:
    """Wall time and this process's CPU time of each timed call. On the shared, loaded machine wall time
    includes waiting for a core; with single-threaded sessions the CPU time is what an idle core would take."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)

    def summary(self) -> dict[str, float]:
        wall, cpu = np.asarray(self.wall) * 1e3, np.asarray(self.cpu) * 1e3
        return {"p50_ms": round(float(np.median(wall)), 2), "p99_ms": round(float(np.percentile(wall, 99)), 2),
                "qps": round(len(wall) / (wall.sum() / 1e3), 2), "cpu_p50_ms": round(float(np.median(cpu)), 2),
                "cpu_p99_ms": round(float(np.percentile(cpu, 99)), 2),
                "cpu_qps": round(len(cpu) / max(cpu.sum() / 1e3, 1e-9), 2), "queries": len(wall)}


def encode_real(bundle: Bundle, seeds: list[int], batch: int = 256
                ) -> tuple[list[np.ndarray], np.ndarray, float, float]:
    encoder = ImageEncoder(bundle, threads=THREADS)
    images = [render(generate_scene(s)) for s in seeds]
    started, cpu_started = time.perf_counter(), time.process_time()
    regions, embeddings = [], []
    for i in range(0, len(images), batch):
        encoded = encoder.encode(images[i:i + batch])
        regions += encoded.regions
        embeddings.append(encoded.embeddings)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    encoder.close()
    return regions, np.concatenate(embeddings), seconds, cpu_seconds


def index_files(bundle: Bundle, seeds: list[int], batch: int = 256) -> dict:
    """``ImageIndex.add`` end to end, as ``fusionrt index add`` runs it: PNG files read and hashed, detection,
    region encoding, image embedding, region features into SQLite and vectors into Qdrant's local mode on disk;
    then bytes on disk per image (after close, so the write-ahead logs are checkpointed) and a re-add."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for seed in seeds:
            Image.fromarray(render(generate_scene(seed))).save(images / f"{seed}.png")
        encoder = ImageEncoder(bundle, threads=THREADS)
        index = ImageIndex(Path(tmp) / "index", bundle)
        started, cpu_started = time.perf_counter(), time.process_time()
        report = index.add(images, encoder, batch=batch)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        started = time.perf_counter()
        again = index.add(images, encoder, batch=batch)
        readd_seconds = time.perf_counter() - started
        index.close()
        encoder.close()
        assert report.added == len(seeds) and again.unchanged == len(seeds), (report, again)

        def size(path: Path) -> int:
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else \
                path.stat().st_size

        root = Path(tmp) / "index"
        return {"images": len(seeds), "seconds": round(seconds, 2),
                "images_per_second": round(len(seeds) / seconds, 1),
                "images_per_cpu_second": round(len(seeds) / cpu_seconds, 1),
                "readd_seconds": round(readd_seconds, 2),
                "bytes_per_image": round(size(root) / len(seeds), 1),
                "vector_store_bytes_per_image": round(size(root / "vectors") / len(seeds), 1),
                "region_store_bytes_per_image": round(size(root / "regions.sqlite") / len(seeds), 1),
                "load": os.getloadavg()}


def synthesise(regions: list[np.ndarray], embeddings: np.ndarray, n: int, rng: np.random.Generator
               ) -> tuple[list[np.ndarray], np.ndarray]:
    if n <= len(regions):
        return regions[:n], embeddings[:n]
    extra = rng.integers(0, len(regions), size=n - len(regions))
    noisy = embeddings[extra] + rng.normal(0, 0.05, size=(len(extra), embeddings.shape[1])).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return regions + [regions[i] for i in extra], np.concatenate([embeddings, noisy])


def measure_size(bundle: Bundle, regions, embeddings, n: int, args, texts, relevance, real: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        index = ImageIndex(Path(tmp) / "index", bundle, vectors=MEMORY)
        shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
        started = time.perf_counter()
        for i in range(0, n, 5000):
            index.regions.put(dict(zip(shas[i:i + 5000], regions[i:i + 5000], strict=True)))
            index.vectors.upsert(shas[i:i + 5000], [f"image/{j}" for j in range(i, min(i + 5000, n))],
                                 embeddings[i:i + 5000])
        load_seconds = time.perf_counter() - started
        searcher = Searcher(index, threads=THREADS)
        searcher.search(texts[0], top=10, rerank=args.rerank)  # warm-up
        rankings, two_stage, first_stage = [], Clock(), Clock()
        for text in texts:  # two-stage, one block
            with two_stage:
                hits = searcher.search(text, top=10, rerank=args.rerank)
            rankings.append(np.array([int(h.path.split("/")[1]) for h in hits]))
        parts = {name: Clock() for name in ("embed_text", "first_stage", "feature_fetch", "rerank_itm")}
        for text in texts:  # the two-stage query's parts, one block (where the time of a query goes)
            with parts["embed_text"]:
                vector = searcher.embed_text(text)
            with parts["first_stage"]:
                candidates = searcher.first_stage.search(vector, args.rerank)
            with parts["feature_fetch"]:
                features = index.regions.get([sha for sha, _, _ in candidates])
            with parts["rerank_itm"]:
                searcher.itm_logits(text, features)
        for text in texts:  # first stage only, one block
            with first_stage:
                searcher.search(text, top=10)
        store, by_store = Searcher(index, first_stage="store", threads=THREADS), Clock()
        for text in texts[: args.store_queries]:  # first stage by the vector database's own search, one block
            with by_store:
                store.search(text, top=10)
        store.close()
        exhaustive, exhaustive_rankings = Clock(), []
        # Exhaustive ITM costs n fusion rows per query: at most --exhaustive-rows rows in all, at least one query.
        for text in texts[: max(1, min(args.exhaustive_queries, len(texts), args.exhaustive_rows // n))]:
            with exhaustive:
                scores = searcher.itm_logits(text, regions)
            exhaustive_rankings.append(np.argsort(-scores, kind="stable")[:10])
        searcher.close()
        row = {"n": n, "synthesised": max(0, n - real), "load_seconds": round(load_seconds, 1),
               "two_stage": two_stage.summary(), "two_stage_parts": {k: v.summary() for k, v in parts.items()},
               "first_stage_only": first_stage.summary(),
               "first_stage_only_by_store": by_store.summary(), "exhaustive_itm": exhaustive.summary(),
               "load": os.getloadavg()}
        if n <= real:
            # Queries were drawn from all ``real`` scenes: below that, only those with a relevant image among
            # the first n count (nDCG is undefined without one).
            sub = relevance[:, :n]
            count = len(exhaustive_rankings)
            scored = [q for q in range(len(rankings)) if sub[q].any()]
            both = [q for q in scored if q < count]
            row["ndcg10_queries"] = {"two_stage": len(scored), "exhaustive": len(both)}
            row["ndcg10_two_stage"] = round(mean_ndcg([rankings[q] for q in scored], sub[scored]), 4)
            if both:
                row["ndcg10_two_stage_on_exhaustive_queries"] = round(
                    mean_ndcg([rankings[q] for q in both], sub[both]), 4)
                row["ndcg10_exhaustive_itm"] = round(mean_ndcg([exhaustive_rankings[q] for q in both], sub[both]), 4)
        print(json.dumps(row), flush=True)
        return row


def plot(rows: list[dict], out: Path, load: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["n"] for r in rows]
    figure, axis = plt.subplots(figsize=(8, 5.5))
    for key, label in (("two_stage", "two-stage (top 128 + ITM re-rank)"), ("exhaustive_itm", "exhaustive ITM"),
                       ("first_stage_only", "first stage in process"),
                       ("first_stage_only_by_store", "first stage by Qdrant local mode")):
        line, = axis.plot(sizes, [r[key]["p50_ms"] for r in rows], marker="o", label=f"{label}: wall")
        axis.plot(sizes, [r[key]["cpu_p50_ms"] for r in rows], marker="x", linestyle="--", color=line.get_color(),
                  label=f"{label}: CPU time")
    axis.axhline(50, color="gray", linewidth=0.8, linestyle=":", label="target: two-stage p50 50 ms at 100k")
    where = f"2 cores shared, load {load:.0f}" if load is not None else "2 cores shared"
    axis.set(xscale="log", yscale="log", xlabel="indexed images N", ylabel="query latency p50 (ms)",
             title=f"Query latency vs N (1 thread per session; {where})")
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    figure.tight_layout()
    figure.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(SHIPPED_MATCH_BUNDLE))
    parser.add_argument("--sizes", default="1000,5000,10000,100000")
    parser.add_argument("--real", type=int, default=5000, help="held-out scenes indexed for real")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rerank", type=int, default=128)
    parser.add_argument("--exhaustive-queries", type=int, default=30)
    parser.add_argument("--exhaustive-rows", type=int, default=200_000,
                        help="bound on the exhaustive ITM rows per size (queries x N; at least one query)")
    parser.add_argument("--index-images", type=int, default=1000,
                        help="held-out scenes written as PNGs and indexed end to end (`index add`)")
    parser.add_argument("--store-queries", type=int, default=10,
                        help="queries timed on the vector database's own search (Qdrant local mode)")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--replot", metavar="JSON", help="redraw --plot from an earlier run's --json, measure nothing")
    args = parser.parse_args()
    if args.replot:  # only redraw the plot of an earlier run's JSON
        earlier = json.loads(Path(args.replot).read_text())
        plot(earlier["sizes"], Path(args.plot), earlier["load_after"][0])
        return
    started = time.perf_counter()
    bundle = Bundle.open(args.bundle)
    sizes = [int(s) for s in args.sizes.split(",")]
    database = heldout_database(args.real, args.queries)
    regions, embeddings, encode_seconds, encode_cpu = encode_real(bundle, database.seeds)
    feature_bytes = sum(r.nbytes // 2 for r in regions) / len(regions)  # stored as float16
    indexing = {"images": len(regions), "encode_seconds": round(encode_seconds, 1),
                "images_per_second": round(len(regions) / encode_seconds, 1),
                "images_per_cpu_second": round(len(regions) / encode_cpu, 1),
                "region_feature_bytes_per_image": round(feature_bytes, 1),
                "vector_bytes_per_image": embeddings.shape[1] * 4, "load": os.getloadavg()}
    print(json.dumps({"indexing_encode_only": indexing}), flush=True)
    index_add = index_files(bundle, database.seeds[: args.index_images]) if args.index_images > 0 else None
    print(json.dumps({"index_add": index_add}), flush=True)  # --index-images 0: not measured
    rng = np.random.default_rng(0)
    rows = []
    texts = [q.text for q in database.queries]
    for n in sizes:
        r, e = synthesise(regions, embeddings, n, rng)
        rows.append(measure_size(bundle, r, e, n, args, texts, database.relevance, args.real))
    result = {"command": "python benchmarks/search_scale.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if v is not None and k not in ("json", "plot", "replot")
        and not (k == "bundle" and v == str(SHIPPED_MATCH_BUNDLE))),
        "indexing": indexing, "index_add": index_add, "sizes": rows, "load_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(rows, Path(args.plot), result["load_after"][0])


if __name__ == "__main__":
    main()
