"""``Searcher``: text -> ranked images of an index (two-stage: vector search, then ITM re-rank), and
``match(image, text)``: one image-text relevance score. Runs on the runtime (any backend and precision the
bundle has); the serving path imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import InputError
from fusionrt.runtime.session import Session
from fusionrt.search.encode import ImageEncoder, pad_regions
from fusionrt.search.index import ImageIndex, ModelMismatchError, model_hash
from fusionrt.search.store import MemoryFirstStage

# Where the first stage runs: "store" (the vector database's own search), "memory" (exact, in process, over a
# snapshot of the store's vectors taken at open), "auto" (memory for the embedded local mode, store for a server).
FIRST_STAGES = ("auto", "store", "memory")
SHIPPED_MATCH_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "match-bundle"


@dataclass(frozen=True)
class Hit:
    """One result: the image's path and content sha256, and its score (the ITM probability after a re-rank,
    else the cosine of the embeddings)."""

    path: str
    sha256: str
    score: float


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Matcher:
    """The text side and the ITM fusion of a match bundle."""

    def __init__(self, bundle: str | Path | Bundle | None = None, backend: str = "onnxruntime",
                 precision: str = "fp32", **options) -> None:
        """``options`` go to every Session (for onnxruntime: ``threads``, ``providers``, ...)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle or SHIPPED_MATCH_BUNDLE)
        if self.bundle.task != "match":
            raise InputError("bundle", "a bundle with task 'match'", f"task {self.bundle.task!r}")
        precisions = sorted(self.bundle.graph("fusion").precisions)
        if precision not in precisions:  # before any Session, so the error names the re-rank's precisions
            raise InputError("precision", f"one of {precisions} (this bundle's ITM graphs)", repr(precision))
        self.backend, self.precision, self.options = backend, precision, options
        self.queries = QuestionEncoder.from_file(self.bundle.file("tokenizer.json"),
                                                 int(self.bundle.model["max_text_len"]))
        self.text_embed = Session(self.bundle, backend, "text_embed", precision, **options)
        self.itm = Session(self.bundle, backend, "fusion", precision, **options)
        self.feature_dim = int(self.bundle.model["visual_dim"])
        self._images: ImageEncoder | None = None

    @property
    def images(self) -> ImageEncoder:
        if self._images is None:
            self._images = ImageEncoder(self.bundle, self.backend, self.precision, **self.options)
        return self._images

    def embed_text(self, text: str) -> np.ndarray:
        ids = self.queries.encode(text)[None]
        return self.text_embed.run({"input_ids": ids, "text_mask": np.ones_like(ids, dtype=bool)})["text_embedding"][0]

    def itm_logits(self, text: str, regions: list[np.ndarray]) -> np.ndarray:
        """The ITM logit of ``text`` with each image (given by its region features), in batches of the graph's
        largest batch."""
        ids = self.queries.encode(text)
        limit = self.itm.dims["B"].max
        out = []
        for start in range(0, len(regions), limit):
            feats, mask = pad_regions(regions[start:start + limit], self.feature_dim)
            rows = len(feats)
            out.append(self.itm.run({"input_ids": np.repeat(ids[None], rows, axis=0),
                                     "text_mask": np.ones((rows, len(ids)), dtype=bool),
                                     "visual_feats": feats, "visual_mask": mask})["logits"][:, 0])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def match(self, image, text: str) -> float:
        """Probability that ``image`` (a path or an HxWx3 uint8 array) shows what ``text`` describes."""
        return float(sigmoid(self.itm_logits(text, self.images.regions([image]))[0]))

    def close(self) -> None:
        self.text_embed.close()
        self.itm.close()
        if self._images is not None:
            self._images.close()


class Searcher(Matcher):
    """Search an index built with the same model: ``Searcher(index).search("a small red circle", top=10)``.

    ``first_stage``: see :data:`FIRST_STAGES`; with "memory" the Searcher sees the index as it was when opened."""

    def __init__(self, index: str | Path | ImageIndex, bundle: str | Path | Bundle | None = None,
                 backend: str = "onnxruntime", precision: str = "fp32", first_stage: str = "auto",
                 **options) -> None:
        super().__init__(bundle if not isinstance(index, ImageIndex) or bundle is not None else index.bundle,
                         backend, precision, **options)
        if isinstance(index, ImageIndex):
            if model_hash(index.bundle) != model_hash(self.bundle):
                raise ModelMismatchError("index", "an index built with this bundle's model",
                                         f"{index.path} built with another model")
            self.index, self._owns_index = index, False
        else:
            self.index, self._owns_index = ImageIndex(index, self.bundle, create=False), True
        if first_stage not in FIRST_STAGES:
            raise InputError("first_stage", f"one of {FIRST_STAGES}", repr(first_stage))
        if first_stage == "auto":
            first_stage = "memory" if self.index.vectors.local else "store"
        self.first_stage = MemoryFirstStage(self.index.vectors) if first_stage == "memory" else self.index.vectors

    def search(self, text: str, top: int = 10, rerank: int = 0) -> list[Hit]:
        """The ``top`` images for ``text``: by embedding cosine, or with ``rerank`` k > 0 the first stage's top
        max(k, top) re-scored by the ITM fusion over their stored region features."""
        if top < 1 or rerank < 0:
            raise InputError("top/rerank", "top >= 1 and rerank >= 0", f"top={top}, rerank={rerank}")
        candidates = self.first_stage.search(self.embed_text(text), max(top, rerank))
        if not rerank:
            return [Hit(path, sha, score) for sha, path, score in candidates[:top]]
        regions = self.index.regions.get([sha for sha, _, _ in candidates])
        scores = sigmoid(self.itm_logits(text, regions))
        order = np.argsort(-scores, kind="stable")[:top]
        return [Hit(candidates[i][1], candidates[i][0], float(scores[i])) for i in order]

    def close(self) -> None:
        super().close()
        if self._owns_index:  # an ImageIndex passed in stays open for its owner
            self.index.close()
