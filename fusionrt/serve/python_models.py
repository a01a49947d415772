"""The code behind the generated ``model.py`` files, run by Triton's Python-backend stub.

``triton_python_backend_utils`` exists only inside the stub, so it is imported in ``initialize``.
Every model opens its copy of the bundle with :meth:`Bundle.open` (sha256 of every file) in
``initialize``: a missing or altered file fails the model load with a message naming the file.

Errors: a :class:`FusionrtError` (bad image, unknown word, out-of-range ids ...) becomes that request's
error response with our message; anything else is logged on the server with its traceback and the
client gets a short message without server paths. Other requests of the same batch are unaffected.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.app import BundlePipeline
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import FusionrtError, InputError
from fusionrt.runtime import Bundle, Session
from fusionrt.serve.answering import answer_logits, image_from_bytes, prepare, question_from_bytes, softmax


class _BundleModel:
    """What both models share: pb_utils, the verified bundle, per-request error responses."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils


        self.pb = pb_utils
        self.name = args["model_name"]
        self.config = json.loads(args["model_config"])
        self.parameters = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        self.max_batch = int(self.config["max_batch_size"])
        bundle_dir = Path(args["model_repository"]) / args["model_version"] / "bundle"
        try:
            self.bundle = Bundle.open(bundle_dir)
            self.load()
        except FusionrtError as exc:
            # The stub reports this message as the load failure; the traceback would add nothing.
            raise RuntimeError(f"fusionrt model {self.name!r} cannot load its bundle: {exc}") from None

    def load(self) -> None:
        """Open sessions and vocabularies (after the bundle is verified)."""

    def error_response(self, exc: BaseException) -> Any:
        pb = self.pb
        if isinstance(exc, FusionrtError):
            return pb.InferenceResponse(error=_triton_error(pb, str(exc), invalid=True))
        pb.Logger.log_error(f"fusionrt model {self.name!r}: {''.join(traceback.format_exception(exc))}")
        return pb.InferenceResponse(error=_triton_error(
            pb, f"{INTERNAL_PREFIX} {self.name!r} ({type(exc).__name__}; details in the server log)"))

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return self.execute_batch(requests)
        except Exception:
            # One bad request must not fail the others batched with it: run each alone.
            responses = []
            for request in requests:
                try:
                    responses.extend(self.execute_batch([request]))
                except Exception as exc:
                    responses.append(self.error_response(exc))
            return responses

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError

    def finalize(self) -> None:
        for session in getattr(self, "sessions", ()):
            session.close()


def _triton_error(pb: Any, message: str, invalid: bool = False) -> Any:
    """A TritonError with INVALID_ARG (HTTP 400) for bad requests, where this backend version takes a code."""
    code = getattr(pb.TritonError, "INVALID_ARG" if invalid else "INTERNAL", None)
    return pb.TritonError(message) if code is None else pb.TritonError(message, code)


class SessionModel(_BundleModel):
    """One bundle graph on a :class:`fusionrt.runtime.Session` (onnxruntime, no torch).

    Requests batched together may differ in their dynamic dims (T, M): each input is zero-padded
    to the largest (zero is [PAD], False or 0.0, all masked), run once, and outputs are cut back.
    """

    def load(self) -> None:
        self.session = Session(self.bundle, "onnxruntime", self.parameters["graph"], self.parameters["precision"])
        self.sessions = (self.session,)
        self.inputs = self.session.inputs
        self.outputs = self.session.outputs

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        feeds, sizes = [], []
        for request in requests:
            feed = {}
            for spec in self.inputs:
                tensor = pb.get_input_tensor_by_name(request, spec.name)
                if tensor is None:
                    raise InputError(spec.name, f"an input {spec.describe()}", "a request without it")
                feed[spec.name] = tensor.as_numpy()
            feeds.append(feed)
            sizes.append({s: feed[t.name].shape[i] for t in self.inputs for i, s in enumerate(t.shape)
                          if isinstance(s, str)})
        merged = {spec.name: _pad_concat([f[spec.name] for f in feeds]) for spec in self.inputs}
        outputs = self.session.run(merged)
        responses, start = [], 0
        for size in sizes:
            rows = next(iter(size.values()))  # every tensor's first dim is the batch
            tensors = []
            for spec in self.outputs:
                cut = tuple(slice(start, start + rows) if i == 0 else slice(0, size[s]) if isinstance(s, str)
                            else slice(None) for i, s in enumerate(spec.shape))
                tensors.append(pb.Tensor(spec.name, np.ascontiguousarray(outputs[spec.name][cut])))
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += rows
        return responses


def _pad_concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the batch dim, zero-padding every other dim to the largest."""
    if len(arrays) == 1:
        return arrays[0]
    shape = np.max([a.shape for a in arrays], axis=0)
    out = np.zeros((sum(a.shape[0] for a in arrays), *shape[1:]), dtype=arrays[0].dtype)
    start = 0
    for a in arrays:
        out[(slice(start, start + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))] = a
        start += a.shape[0]
    return out


INTERNAL_PREFIX = "internal error in model"


def bls_call(pb: Any, model: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
    """``output`` of one request to another model of the same server (Triton's business logic scripting).

    A refusal by the called model (bad values, non-finite outputs) is the client's error and raised typed.
    It is told from a failure by its message, not its code: measured on tritonserver 2.51, a BLS response
    carries INTERNAL whatever code the called model set, while our models word only failures with
    :data:`INTERNAL_PREFIX` (and Triton's own refusals, shape or dtype, are the client's too)."""
    request = pb.InferenceRequest(model_name=model, requested_output_names=[output],
                                  inputs=[pb.Tensor(name, value) for name, value in feed.items()])
    response = request.exec()
    if response.has_error():
        message = response.error().message()
        if message.startswith(INTERNAL_PREFIX):
            raise RuntimeError(f"model {model!r}: {message}")
        raise InputError(f"model {model!r}", "a request it accepts", message)
    return pb.get_output_tensor_by_name(response, output).as_numpy()


class _TritonPipeline:
    """The Answerer's two graphs called through Triton (BLS): the ``region_encoder`` and ``fusion`` models."""

    def __init__(self, pb: Any) -> None:
        self.pb = pb

    def _call(self, model: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        return bls_call(self.pb, model, feed, output)

    def encode_regions(self, crops: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        return self._call("region_encoder", {"crops": crops, "geometry": geometry}, "feats")

    def fuse(self, input_ids: np.ndarray, text_mask: np.ndarray, visual_feats: np.ndarray,
             visual_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "text_mask": text_mask, "visual_feats": visual_feats,
                "visual_mask": visual_mask}
        return self._call("fusion", feed, "logits")


class AnswerModel(_BundleModel):
    """PNG bytes + question string in, answer string + probability (+ all probabilities) out.

    Parameter ``calls``: ``bls`` (default) calls the ``region_encoder`` and ``fusion`` models of the
    repository, so they batch across answer instances and run on their own backend; ``local`` runs
    both graphs in this stub on onnxruntime (no Triton hop; measured in benchmarks/bench_triton.py).
    """

    def load(self) -> None:
        if self.parameters.get("calls", "bls") == "local":
            self.pipeline = BundlePipeline(self.bundle.path)
            self.sessions = (self.pipeline.region_encoder, self.pipeline.fusion)
        else:
            self.pipeline = _TritonPipeline(self.pb)
            self.pipeline.questions = QuestionEncoder.from_file(
                self.bundle.file("tokenizer.json"), int(self.bundle.model["max_text_len"]))
            self.pipeline.answers = json.loads(self.bundle.file("answers.json").read_text())
            self.pipeline.max_visual_len = int(self.bundle.model["max_visual_len"])
        # The repository gives fusion the answer model's max_batch_size: one fusion call per execute.
        self.fusion_max_batch = self.max_batch

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        pb, pipeline = self.pb, self.pipeline
        prepared, rows = [], []
        for request in requests:
            images = pb.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            questions = pb.get_input_tensor_by_name(request, "question").as_numpy().reshape(-1)
            for image, question in zip(images, questions, strict=True):
                prepared.append(prepare(image_from_bytes(image), question_from_bytes(question),
                                        pipeline.questions, pipeline.max_visual_len))
            rows.append(len(images))
        probs = softmax(answer_logits(pipeline, prepared, self.fusion_max_batch).astype(np.float64))
        best = probs.argmax(axis=-1)
        top = probs[np.arange(len(best)), best].astype(np.float32)
        answers = np.array([pipeline.answers[i].encode() for i in best], dtype=np.object_)
        responses, start = [], 0
        for count in rows:
            part = slice(start, start + count)
            responses.append(pb.InferenceResponse(output_tensors=[
                pb.Tensor("answer", answers[part].reshape(count, 1)),
                pb.Tensor("probability", top[part].reshape(count, 1)),
                pb.Tensor("probabilities", probs[part].astype(np.float32)),
            ]))
            start += count
        return responses
