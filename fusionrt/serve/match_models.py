"""The ``embed_text`` and ``match`` models of a match bundle's Triton repository (two-stage search at scale).

- ``embed_text``: query text (BYTES) -> ``embedding`` FP32 [E], unit length: the first stage's query vector,
  searched in the vector database (a Qdrant server) by dot product.
- ``match``: one (text, image) pair per row -> ``score`` (ITM probability) and ``logit``. The image is given
  by its stored region features (``visual_feats`` FP32 [M, Dv] with a prefix ``visual_mask`` [M]), exactly
  what the index keeps per image (``RegionStore``), not by an image id.

Why features and not ids: the per-image work (detection, region encoding) is done once, at indexing, and
lives in the index; the client that ran the first stage already holds the k candidate ids and reads their
features from the region store in one keyed read. Sending them keeps every Triton replica stateless (no copy
of, or connection to, the index: any replica can re-rank any query, scaling is adding replicas) and the
model independent of where the store lives (SQLite on one machine, any key-value store beside a cluster).
The cost is bytes on the wire: k=128 candidates x 16 regions x 69 floats = 565 kB per query.

Text is tokenized on the server with the bundle's tokenizer (clients need no vocabulary). Parameter
``calls``: ``bls`` (default) runs the graphs through the repository's ``text_embed`` / ``fusion`` models, so
they batch across callers and can be switched to another backend; ``local`` runs them in this stub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import InputError
from fusionrt.runtime import Session
from fusionrt.serve.answering import question_from_bytes
from fusionrt.serve.python_models import _BundleModel, bls_call

TEXT_EMBED, FUSION = "text_embed", "fusion"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _TextModel(_BundleModel):
    """Tokenizer and graph calls (BLS or local sessions) shared by both models."""

    graphs: tuple[str, ...] = ()

    def load(self) -> None:
        self.queries = QuestionEncoder.from_file(self.bundle.file("tokenizer.json"),
                                                 int(self.bundle.model["max_text_len"]))
        if self.parameters.get("calls", "bls") == "local":
            precision = self.parameters.get("precision", "fp32")
            sessions = {g: Session(self.bundle, "onnxruntime", g, precision) for g in self.graphs}
            self.sessions = tuple(sessions.values())
            self.run_graph: Callable[[str, dict, str], np.ndarray] = \
                lambda graph, feed, output: sessions[graph].run(feed)[output]
        else:
            self.run_graph = lambda graph, feed, output: bls_call(self.pb, graph, feed, output)

    def texts(self, request: Any, name: str = "text") -> list[str]:
        return [question_from_bytes(t, name) for t in self.pb.get_input_tensor_by_name(request, name).as_numpy()
                .reshape(-1)]

    def tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` [n,T] padded with [PAD] and ``text_mask``; each distinct text encoded once."""
        encoded = {t: self.queries.encode(t) for t in dict.fromkeys(texts)}
        width = max(len(ids) for ids in encoded.values())
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=bool)
        for row, text in enumerate(texts):
            tokens = encoded[text]
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, True
        return ids, mask

    def in_chunks(self, graph: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        """The graph over ``feed`` in chunks of at most this model's max batch (the called model's limit)."""
        rows = len(next(iter(feed.values())))
        return np.concatenate([self.run_graph(graph, {k: np.ascontiguousarray(v[s:s + self.max_batch])
                                                      for k, v in feed.items()}, output)
                               for s in range(0, rows, self.max_batch)])

    @staticmethod
    def split(pb: Any, counts: list[int], outputs: dict[str, np.ndarray]) -> list[Any]:
        responses, start = [], 0
        for count in counts:
            responses.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor(name, np.ascontiguousarray(value[start:start + count])) for name, value in outputs.items()]))
            start += count
        return responses


class EmbedTextModel(_TextModel):
    """``text`` (BYTES) -> ``embedding`` (FP32 [E], unit length), as ``Matcher.embed_text``."""

    graphs = (TEXT_EMBED,)

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        texts = [self.texts(r) for r in requests]
        ids, mask = self.tokens([t for group in texts for t in group])
        embedding = self.in_chunks(TEXT_EMBED, {"input_ids": ids, "text_mask": mask}, "text_embedding")
        return self.split(self.pb, [len(t) for t in texts], {"embedding": embedding.astype(np.float32)})


class MatchModel(_TextModel):
    """Per row ``text`` (BYTES), ``visual_feats`` (FP32 [M, Dv]) and ``visual_mask`` (BOOL [M]) -> ``score``
    (sigmoid of the ITM logit, as ``Searcher.search(..., rerank=k)`` reports) and ``logit`` (FP32 [1])."""

    graphs = (FUSION,)

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        texts, feats, masks, counts = [], [], [], []
        for request in requests:
            rows = self.texts(request)
            visual = pb.get_input_tensor_by_name(request, "visual_feats").as_numpy()
            mask = pb.get_input_tensor_by_name(request, "visual_mask").as_numpy()
            if mask.shape != visual.shape[:2]:
                raise InputError("visual_mask", f"one flag per region of visual_feats {list(visual.shape[:2])}",
                                 f"shape {list(mask.shape)}")
            texts += rows
            feats.append(visual)
            masks.append(mask)
            counts.append(len(rows))
        width = max(f.shape[1] for f in feats)  # requests of different M: pad with masked regions
        visual = np.zeros((sum(counts), width, feats[0].shape[2]), dtype=np.float32)
        visual_mask = np.zeros((sum(counts), width), dtype=bool)
        start = 0
        for f, m in zip(feats, masks, strict=True):
            visual[start:start + len(f), : f.shape[1]], visual_mask[start:start + len(f), : f.shape[1]] = f, m
            start += len(f)
        ids, text_mask = self.tokens(texts)
        logits = self.in_chunks(FUSION, {"input_ids": ids, "text_mask": text_mask, "visual_feats": visual,
                                         "visual_mask": visual_mask}, "logits").astype(np.float32)
        return self.split(pb, counts, {"score": sigmoid(logits).astype(np.float32), "logit": logits})
