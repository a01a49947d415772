"""Parity of a caption bundle on held-out scenes: runtime greedy generation (KV cache, the bundle's graphs)
against the PyTorch original (greedy, full recompute at every step).

Per scene: whether the token sequences are identical and, if not, the first divergent step. Per step: the
largest logit error, measured with the runtime teacher-forced along PyTorch's tokens (so every step compares
the same prefix even after a divergence). Also exact match against the grammar's captions and sacrebleu BLEU
of each side. Gates: token-identical on at least ``min_identical`` of the scenes and, at fp32, logits within
``max_abs`` at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle, sha256_file
from fusionrt.caption.captioner import Captioner
from fusionrt.caption.generate import greedy
from fusionrt.data.captions import caption_text
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import BundleError, InputError
from fusionrt.progress import SILENT, Progress

MIN_IDENTICAL = 0.995
BUDGET_POINTS = 1.0  # exact match and BLEU, against fp32 PyTorch
FP32_MAX_ABS = 1e-4
BATCH = 16
CAPTION_BACKENDS = ("onnxruntime", "openvino")  # the backends with a caption stepper


def _source_checkpoint(bundle: Bundle, checkpoint: str | Path | None) -> Path:
    source = bundle.manifest.get("source", {})
    path = Path(checkpoint if checkpoint is not None else source.get("path", ""))
    if checkpoint is None and not path.is_absolute() and not path.exists():
        path = Path(__file__).resolve().parents[2] / path  # a packaged bundle records a repository path
    for name, digest in source.get("files", {}).items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise BundleError("source checkpoint", f"{name} with the sha256 recorded at export in {path} "
                              "(pass --checkpoint DIR if it moved)", "a missing or different file")
    return path


def bleu(hypotheses: list[str], references: list[str]) -> float | None:
    """Corpus BLEU with sacrebleu (None when it is not installed: pip install 'fusionrt[caption]')."""
    try:
        import sacrebleu
    except ImportError:
        return None
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@dataclass
class CaptionReference:
    """The fp32 PyTorch side of caption parity on held-out scenes, computed once and shared by every precision
    measured against it (PyTorch recompute greedy is most of a measurement's time)."""

    seeds: list[int]
    truth: list[str]  # the grammar's captions
    batches: list[tuple[np.ndarray, np.ndarray]]  # (visual feats, visual mask) per batch of BATCH scenes
    tokens: list[list[int]]  # PyTorch greedy ids per scene (after BOS, EOS included)
    logits: list[list[np.ndarray]]  # per batch, per step: [B, V] PyTorch logits along its own tokens
    texts: list[str]  # PyTorch greedy captions

    @property
    def scenes(self) -> int:
        return len(self.seeds)

    def head(self, scenes: int) -> CaptionReference:
        """The first ``scenes`` scenes (the same held-out seeds a smaller reference would decode)."""
        if not 1 <= scenes <= self.scenes:
            raise InputError("scenes", f"between 1 and the reference's {self.scenes}", str(scenes))
        batches, logits, left = [], [], scenes
        for (visual, mask), steps in zip(self.batches, self.logits, strict=True):
            if left <= 0:
                break
            batches.append((visual[:left], mask[:left]))
            logits.append([step[:left] for step in steps])
            left -= len(visual)
        return CaptionReference(self.seeds[:scenes], self.truth[:scenes], batches, self.tokens[:scenes], logits,
                                self.texts[:scenes])


def caption_reference(bundle: Bundle, scenes: int = 200, checkpoint: str | Path | None = None,
                      progress: Progress = SILENT) -> CaptionReference:
    """Detect and encode ``scenes`` held-out scenes (the bundle's fp32 region encoder) and decode them greedily
    with the PyTorch original (full recompute at every step, the step logits kept)."""
    import torch

    from fusionrt.model.caption_checkpoint import load_caption_checkpoint
    from fusionrt.model.caption_decode import greedy_torch

    if scenes < 1:
        raise InputError("scenes", "at least 1 held-out scene", str(scenes))
    decoder = load_caption_checkpoint(_source_checkpoint(bundle, checkpoint)).decoder
    captioner = Captioner(bundle.path)
    world = [generate_scene(seed) for seed in split_seeds("heldout", scenes)]
    reference = CaptionReference([int(s.seed) for s in world], [caption_text(s).replace(" ,", ",") for s in world],
                                 [], [], [], [])
    # One intra-op thread: this decoder's matmuls are tiny, and on a busy 2-core machine two threads contend;
    # measured 40.7 s with 2 threads vs 3.6 s with 1 for 64 scenes (load average 6.5).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in progress.iterate(range(0, scenes, BATCH), "caption reference (PyTorch)", unit="batch"):
            visual, mask = captioner.visual_inputs([render(s) for s in world[start:start + BATCH]])
            tokens, logits = greedy_torch(decoder, torch.from_numpy(visual), torch.from_numpy(mask),
                                          return_logits=True, use_cache=False)
            reference.batches.append((visual, mask))
            reference.tokens += tokens
            reference.logits.append([step.numpy() for step in logits])
            reference.texts += [captioner.decode(t) for t in tokens]
    finally:
        torch.set_num_threads(threads)
    return reference


def caption_parity(bundle: Bundle, *, scenes: int = 200, precision: str = "fp32", checkpoint: str | Path | None = None,
                   min_identical: float = MIN_IDENTICAL, max_abs: float | None = None,
                   reference: CaptionReference | None = None, backend: str = "onnxruntime",
                   progress: Progress = SILENT) -> dict[str, Any]:
    """The report (see the module docstring); ``report["passed"]`` says whether every gate held. ``reference``:
    one computed before (its scenes are used and ``scenes``/``checkpoint`` ignored); ``backend``: the candidate's
    (``onnxruntime`` or ``openvino``)."""
    max_abs = FP32_MAX_ABS if max_abs is None and precision == "fp32" else max_abs
    if reference is None:
        reference = caption_reference(bundle, scenes, checkpoint, progress)
    captioner = Captioner(bundle.path, precision, backend=backend)
    candidate: list[list[int]] = []
    step_error: list[float] = []
    offset = 0
    for (visual, mask), logits in progress.iterate(list(zip(reference.batches, reference.logits, strict=True)),
                                                   f"caption parity ({precision})", unit="batch"):
        rows = reference.tokens[offset:offset + len(visual)]
        offset += len(visual)
        candidate += greedy(captioner.stepper, visual, mask, bos=captioner.bos, eos=captioner.eos,
                            max_new_tokens=captioner.max_new_tokens)
        # Teacher-forced along PyTorch's tokens: every step compares the same prefix, even after a divergence.
        captioner.stepper.start(visual, mask)
        ids = np.full((len(visual), 1), captioner.bos, dtype=np.int64)
        for step, expected in enumerate(logits):
            live = np.array([len(r) > step for r in rows])
            got = captioner.stepper.step(ids)[:, -1]
            error = float(np.abs(got - expected)[live].max(initial=0.0))  # a head() may hold finished rows only
            step_error += [0.0] * (step + 1 - len(step_error))
            step_error[step] = max(step_error[step], error)
            ids = expected.argmax(-1)[:, None].astype(np.int64)
    identical = [ref == cand for ref, cand in zip(reference.tokens, candidate, strict=True)]
    first_divergent = [None if same else next((i for i, (a, b) in enumerate(zip(ref, cand, strict=False)) if a != b),
                                              min(len(ref), len(cand)))
                       for ref, cand, same in zip(reference.tokens, candidate, identical, strict=True)]
    runtime_text = [captioner.decode(c) for c in candidate]
    truth = reference.truth
    fraction = float(np.mean(identical))
    worst = max(step_error) if step_error else 0.0
    exact = {"candidate": float(np.mean([a == b for a, b in zip(runtime_text, truth, strict=True)])),
             "reference": float(np.mean([a == b for a, b in zip(reference.texts, truth, strict=True)]))}
    scores = {"candidate": bleu(runtime_text, truth), "reference": bleu(reference.texts, truth)}
    if precision == "fp32":
        gates = {"token_identical": {"value": fraction, "min": min_identical, "passed": fraction >= min_identical}}
    else:  # a reduced precision may change tokens; its budget is in caption terms
        drop = 100 * (exact["reference"] - exact["candidate"])
        gates = {"exact_match_drop_points": {"value": drop, "max": BUDGET_POINTS, "passed": drop <= BUDGET_POINTS}}
        if scores["candidate"] is not None:
            bleu_drop = scores["reference"] - scores["candidate"]
            gates["bleu_drop_points"] = {"value": bleu_drop, "max": BUDGET_POINTS,
                                         "passed": bleu_drop <= BUDGET_POINTS}
    if max_abs is not None:
        gates["logits_max_abs"] = {"value": worst, "max": max_abs, "passed": worst <= max_abs}
    divergent = [d for d in first_divergent if d is not None]
    return {
        "task": "caption", "precision": precision, "scenes": reference.scenes,
        "reference": "torch fp32 (greedy, recompute)", "candidate": f"{backend} {precision} (greedy, KV cache)",
        "backend": backend,
        "token_identical": fraction,
        "first_divergent_step": min(divergent) if divergent else None,
        "divergent_scenes": [{"seed": seed, "first_divergent_step": d}
                             for seed, d in zip(reference.seeds, first_divergent, strict=True) if d is not None],
        "per_step_logits_max_abs": step_error,
        "exact_match": exact, "bleu": scores,
        "gates": gates, "passed": all(g["passed"] for g in gates.values()),
    }


def format_caption_parity(report: dict[str, Any]) -> str:
    lines = [f"caption parity on {report['scenes']} held-out scenes ({report['precision']}): "
             f"{report['candidate']} vs {report['reference']}",
             f"  token-identical greedy captions: {100 * report['token_identical']:.2f}%"
             + (f" (earliest first divergent step: {report['first_divergent_step']})"
                if report.get("first_divergent_step") is not None else ""),
             f"  exact match: candidate {100 * report['exact_match']['candidate']:.2f}%, reference "
             f"{100 * report['exact_match']['reference']:.2f}%"]
    if report["bleu"]["candidate"] is not None:
        scores = report["bleu"]
        lines.append(f"  BLEU: candidate {scores['candidate']:.2f}, reference {scores['reference']:.2f}")
    errors = report["per_step_logits_max_abs"]
    if errors:
        lines.append(f"  logits max abs per step: worst {max(errors):.2e} at step {int(np.argmax(errors))}, "
                     f"first {errors[0]:.2e}, last {errors[-1]:.2e}")
    for divergent in report["divergent_scenes"][:5]:
        lines.append(f"  seed {divergent['seed']}: first divergent step {divergent['first_divergent_step']}")
    for name, gate in report["gates"].items():
        bound = f">= {gate['min']}" if "min" in gate else f"<= {gate['max']}"
        lines.append(f"  gate {name}: {gate['value']:.6g} {bound} {'passed' if gate['passed'] else 'FAILED'}")
    return "\n".join(lines)
