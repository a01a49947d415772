"""Decoding loops over a :class:`fusionrt.caption.steppers.Stepper` (numpy only).

Every loop starts each row with BOS and runs the step graph on one new token per row per step (S = 1).

- :func:`stream_greedy` yields each step's tokens as they are chosen. Rows finish at different steps; with
  ``drop_finished`` (the default) a row that emitted EOS is dropped from the batch (one gather of the cache
  when any row finishes), so a finished row costs nothing afterwards; without it, the row keeps running at
  the full per-row cost of a step (its outputs are discarded) until the last row finishes.
- :func:`greedy` collects the stream.
- :func:`beam_search` keeps ``width`` hypotheses per image, scored by summed log-probability (no length
  penalty); a hypothesis that emitted EOS stays in the beam with its score frozen, and the search ends when
  every kept hypothesis has ended or ``max_new_tokens`` is reached.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fusionrt.caption.steppers import Stepper
from fusionrt.errors import InputError

FINISHED = -1


def _check(max_new_tokens: int, limit: int) -> int:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or not 1 <= max_new_tokens <= limit:
        raise InputError("max_new_tokens", f"an integer in [1, {limit}]", repr(max_new_tokens))
    return max_new_tokens


def stream_greedy(stepper: Stepper, visual_feats: np.ndarray, visual_mask: np.ndarray, *, bos: int, eos: int,
                  max_new_tokens: int, drop_finished: bool = True) -> Iterator[np.ndarray]:
    """Yield, per step, int64 [B]: each row's new token, or ``FINISHED`` (-1) for a row that already ended."""
    batch = visual_feats.shape[0]
    stepper.start(visual_feats, visual_mask)
    live = np.arange(batch)  # original row of each row the stepper holds
    done = np.zeros(batch, dtype=bool)
    ids = np.full((batch, 1), bos, dtype=np.int64)
    for _ in range(max_new_tokens):
        token = stepper.step(ids)[:, -1].argmax(-1).astype(np.int64, copy=False)
        out = np.full(batch, FINISHED, dtype=np.int64)
        if drop_finished:  # every row the stepper holds is running: few array operations per step
            out[live] = token
            yield out
            ended = token == eos
            if ended.any():
                done[live[ended]] = True
                if done.all():
                    return
                keep = np.flatnonzero(~ended)
                stepper.select(keep)
                live, token = live[keep], token[keep]
            ids = token[:, None]
            continue
        running = ~done[live]
        out[live[running]] = token[running]
        yield out
        done[live[running & (token == eos)]] = True
        if done.all():
            return
        ids = np.where(done[live], eos, token)[:, None]


def greedy(stepper: Stepper, visual_feats: np.ndarray, visual_mask: np.ndarray, *, bos: int, eos: int,
           max_new_tokens: int, drop_finished: bool = True) -> list[list[int]]:
    """Greedy token ids of each row after BOS (EOS included when reached)."""
    steps = list(stream_greedy(stepper, visual_feats, visual_mask, bos=bos, eos=eos, max_new_tokens=max_new_tokens,
                               drop_finished=drop_finished))
    table = np.stack(steps, axis=1)  # [B, steps]; a row is FINISHED from its end on
    return [row[row != FINISHED].tolist() for row in table]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(stepper: Stepper, visual_feats: np.ndarray, visual_mask: np.ndarray, *, bos: int, eos: int,
                max_new_tokens: int, width: int) -> list[tuple[list[int], float]]:
    """The best hypothesis of each image (token ids after BOS, EOS included when reached) and its summed
    log-probability."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise InputError("beam", "a positive integer", repr(width))
    images = visual_feats.shape[0]
    stepper.start(visual_feats, visual_mask)
    stepper.select(np.repeat(np.arange(images), width))
    scores = np.full((images, width), -np.inf)
    scores[:, 0] = 0.0  # every beam starts as the same BOS: only the first may spawn
    sequences: list[list[list[int]]] = [[[] for _ in range(width)] for _ in range(images)]
    ended = np.zeros((images, width), dtype=bool)
    ids = np.full((images * width, 1), bos, dtype=np.int64)
    for _ in range(max_new_tokens):
        logp = _log_softmax(stepper.step(ids)[:, -1]).reshape(images, width, -1)
        vocab = logp.shape[-1]
        candidates = scores[:, :, None] + logp
        candidates[ended] = -np.inf
        candidates[ended, eos] = scores[ended]  # an ended hypothesis carries over unchanged
        flat = candidates.reshape(images, -1)
        best = np.argsort(-flat, axis=1, kind="stable")[:, :width]
        origin, token = best // vocab, best % vocab
        scores = np.take_along_axis(flat, best, axis=1)
        was_ended = np.take_along_axis(ended, origin, axis=1)
        sequences = [[sequences[i][origin[i, j]] + ([] if was_ended[i, j] else [int(token[i, j])])
                      for j in range(width)] for i in range(images)]
        ended = was_ended | (token == eos)
        if ended.all():
            break
        stepper.select((np.arange(images)[:, None] * width + origin).reshape(-1))
        ids = token.reshape(-1, 1).astype(np.int64)
    best_beam = scores.argmax(axis=1)
    return [(sequences[i][best_beam[i]], float(scores[i, best_beam[i]])) for i in range(images)]
