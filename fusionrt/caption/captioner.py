"""Caption scene images: ``Captioner().caption(image) -> str``.

By default the shipped caption model runs through its packaged bundle (``fusionrt/assets/caption-bundle``) on
ONNX Runtime without importing torch; a caption checkpoint directory runs the PyTorch original.
``caption_many`` detects and encodes many images (one region-encoder call per chunk) and generates their
captions in batches; ``stream`` yields a caption's words as they are generated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle, is_bundle
from fusionrt.caption.forms import STEPPER_BACKENDS, make_stepper
from fusionrt.caption.generate import FINISHED, beam_search, greedy, stream_greedy
from fusionrt.caption.steppers import Stepper, TorchStepper
from fusionrt.data.batch import detect_many
from fusionrt.data.captions import MAX_CAPTION_TOKENS
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import BundleError, InputError
from fusionrt.runtime.session import Session

SHIPPED_CAPTION_BUNDLE = Path(__file__).resolve().parents[1] / "assets" / "caption-bundle"
CAPTION_TASK = "caption"
MAX_IMAGES_PER_CALL = 16
Image = str | Path | np.ndarray


class Captioner:
    """``model_or_bundle``: ``None`` (the shipped caption bundle), a caption bundle directory (run on ONNX
    Runtime or OpenVINO, no torch) or a caption checkpoint directory (PyTorch). ``backend``: ``"onnxruntime"``
    (default) or ``"openvino"`` for a bundle's decoder graphs (the region encoder runs on ONNX Runtime);
    ``threads``: intra-op threads."""

    def __init__(self, model_or_bundle: str | Path | None = None, precision: str = "fp32",
                 threads: int | None = None, backend: str = "onnxruntime") -> None:
        source = Path(model_or_bundle) if model_or_bundle is not None else SHIPPED_CAPTION_BUNDLE
        if is_bundle(source):
            bundle = Bundle.open(source)
            if bundle.task != CAPTION_TASK:
                raise BundleError("bundle", f"a bundle of task {CAPTION_TASK!r} (fusionrt export --task caption)",
                                  f"task {bundle.task!r} at {source}")
            self.model: dict[str, Any] = bundle.model
            if backend not in STEPPER_BACKENDS:
                raise InputError("backend", f"one of {list(STEPPER_BACKENDS)} for a caption bundle", repr(backend))
            # the KV-cache form measured fastest for this backend (fusionrt.caption.forms)
            self.stepper: Stepper = make_stepper(bundle, backend, precision, threads=threads)
            region_session = Session(bundle, "onnxruntime", "region_encoder", "fp32",
                                     **({"threads": threads} if threads else {}))
            self._encode = lambda crops, geometry: region_session.run({"crops": crops, "geometry": geometry})["feats"]
            tokenizer_path = bundle.file("tokenizer.json")
            self.max_batch = int(self.model["max_batch"])
        else:
            if precision != "fp32":
                raise InputError("precision", "fp32 for a checkpoint (other precisions need a bundle)",
                                 repr(precision))
            import torch

            from fusionrt.model.caption_checkpoint import load_caption_checkpoint

            checkpoint = load_caption_checkpoint(source)
            config = checkpoint.decoder.config
            self.model = {**config.to_dict(), "max_batch": MAX_IMAGES_PER_CALL}
            self.stepper = TorchStepper(checkpoint.decoder)

            def encode(crops: np.ndarray, geometry: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return checkpoint.region_encoder(torch.from_numpy(crops), torch.from_numpy(geometry)).numpy()

            self._encode = encode
            tokenizer_path = source / "tokenizer.json"
            self.max_batch = MAX_IMAGES_PER_CALL
        self.tokens = QuestionEncoder.from_file(tokenizer_path, MAX_CAPTION_TOKENS)
        self.bos, self.eos = int(self.model["bos_id"]), int(self.model["eos_id"])
        self.max_visual_len = int(self.model["max_visual_len"])
        self.max_new_tokens = int(self.model["max_text_len"]) - 1

    def visual_inputs(self, images: Sequence[Image]) -> tuple[np.ndarray, np.ndarray]:
        """``visual_feats`` [B,M,Dv] and ``visual_mask`` [B,M] of images: regions detected, sorted left to right,
        encoded in one region-encoder call."""
        crops, geometry, counts = detect_many(images, self.max_visual_len, left_to_right=True)
        feats = self._encode(crops, geometry)
        width = max(counts)
        visual = np.zeros((len(images), width, feats.shape[1]), dtype=np.float32)
        mask = np.arange(width)[None, :] < np.asarray(counts)[:, None]
        visual[mask] = feats
        return visual, mask

    def token_ids_many(self, images: Sequence[Image], beam: int = 1, max_new_tokens: int | None = None,
                       batch_size: int | None = None) -> list[list[int]]:
        """Generated ids after BOS (EOS included when reached) of each image, ``batch_size`` images per batch."""
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self.max_new_tokens:
            raise InputError("max_new_tokens", f"an integer in [1, {self.max_new_tokens}]", repr(max_new_tokens))
        if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
            raise InputError("beam", "a positive integer", repr(beam))
        size = batch_size or max(1, self.max_batch // beam)
        if not 1 <= size * beam <= self.max_batch:
            raise InputError("batch_size", f"images x beam within the bundle's max batch {self.max_batch}",
                             f"{size} x {beam}")
        out: list[list[int]] = []
        images = list(images)
        for start in range(0, len(images), size):
            visual, mask = self.visual_inputs(images[start:start + size])
            if beam == 1:
                out += greedy(self.stepper, visual, mask, bos=self.bos, eos=self.eos, max_new_tokens=limit)
            else:
                out += [ids for ids, _ in beam_search(self.stepper, visual, mask, bos=self.bos, eos=self.eos,
                                                      max_new_tokens=limit, width=beam)]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokens.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def caption_many(self, images: Sequence[Image], beam: int = 1, max_new_tokens: int | None = None,
                     batch_size: int | None = None) -> list[str]:
        return [self.decode(ids) for ids in self.token_ids_many(images, beam, max_new_tokens, batch_size)]

    def caption(self, image: Image, beam: int = 1, max_new_tokens: int | None = None) -> str:
        return self.caption_many([image], beam, max_new_tokens)[0]

    def stream(self, image: Image, max_new_tokens: int | None = None) -> Iterator[str]:
        """Greedy caption of one image, yielded token by token (as text, EOS not included)."""
        visual, mask = self.visual_inputs([image])
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        for tokens in stream_greedy(self.stepper, visual, mask, bos=self.bos, eos=self.eos, max_new_tokens=limit):
            token = int(tokens[0])
            if token in (FINISHED, self.eos):
                return
            yield self.tokens.tokenizer.id_to_token(token)
