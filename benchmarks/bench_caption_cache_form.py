"""Fixed-capacity KV cache vs growing tensors (plain Concat) on ONNX Runtime CPU, same weights, one run.

    .venv/bin/python benchmarks/bench_caption_cache_form.py [--runs 5] [--threads 2]

Growing: the shipped ``caption_step`` graph; each step returns a present cache of P+1 positions (ORT allocates
it; IO binding hands it to the next step). Fixed capacity: one buffer of ``max_text_len`` positions per
K and V, the new key/value written at position P with a Where (ORT GenAI's past_present_share_buffer idea in
plain ONNX), attention over all positions with the unwritten ones masked; the output is bound to a second
preallocated buffer and the two swap every step (plain ONNX cannot alias an output to its input). Checks the
two forms give the same logits, then times B=1 and B=8 greedy decodes of 40 tokens, each form in blocks.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.steppers import OrtStepper, cache_shape
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.model.caption import CaptionDecoder
from fusionrt.model.caption_checkpoint import load_caption_checkpoint


class FixedCapacityStep(nn.Module):
    """One token per row at position ``position`` into caches of fixed capacity C."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.d = decoder

    def forward(self, input_ids, position, cache_mask, key_buf, value_buf, visual_key, visual_value, visual_mask):
        d = self.d
        capacity = key_buf.shape[3]
        write = torch.arange(capacity) == position  # [C]
        text = d.text_norm(d.token_embedding(input_ids) + d.position_embedding(position)[None])
        allowed = torch.cat([cache_mask | write[None], visual_mask], dim=1)[:, None, None, :]
        bias = torch.where(allowed, torch.zeros(()), torch.full((), d.config.mask_fill))
        keys_out, values_out = [], []
        for index, layer in enumerate(d.layers):
            normed = layer.attention_norm(text)
            q = layer.split(layer.query(normed) * layer.scale)
            slot = write[None, None, :, None]
            k = torch.where(slot, layer.split(layer.key(normed)), key_buf[index])
            v = torch.where(slot, layer.split(layer.value(normed)), value_buf[index])
            probs = torch.softmax(torch.matmul(q, torch.cat([k, visual_key[index]], 2).transpose(-1, -2)) + bias, -1)
            context = torch.matmul(probs, torch.cat([v, visual_value[index]], 2)).transpose(1, 2)
            text = text + layer.out(context.reshape(text.shape[0], 1, -1))
            text = text + layer.feed_forward(layer.feed_forward_norm(text))
            keys_out.append(k)
            values_out.append(v)
        return d.lm_head(d.final_norm(text)), torch.stack(keys_out), torch.stack(values_out)


NAMES = ["input_ids", "position", "cache_mask", "key_buf", "value_buf", "visual_key", "visual_value", "visual_mask"]


def export_fixed(decoder: CaptionDecoder, threads: int) -> ort.InferenceSession:
    c = decoder.config
    shape = (c.layers, 2, c.heads, c.max_text_len, c.head_dim)
    vshape = (c.layers, 2, c.heads, 5, c.head_dim)
    args = (torch.zeros((2, 1), dtype=torch.long), torch.tensor([3]),
            torch.zeros((2, c.max_text_len), dtype=torch.bool),
            torch.zeros(shape), torch.zeros(shape), torch.zeros(vshape), torch.zeros(vshape),
            torch.ones((2, 5), dtype=torch.bool))
    buffer = io.BytesIO()
    torch.onnx.export(FixedCapacityStep(decoder).eval(), args, buffer, dynamo=False, opset_version=17,
                      input_names=NAMES, output_names=["logits", "key_out", "value_out"],
                      dynamic_axes={"input_ids": {0: "B"}, "cache_mask": {0: "B"}, "key_buf": {1: "B"},
                                    "value_buf": {1: "B"}, "visual_key": {1: "B", 3: "M"},
                                    "visual_value": {1: "B", 3: "M"}, "visual_mask": {0: "B", 1: "M"},
                                    "logits": {0: "B"}, "key_out": {1: "B"}, "value_out": {1: "B"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


class FixedStepper:
    def __init__(self, session, visual: OrtStepper, model: dict) -> None:
        self.session, self.visual, self.model = session, visual, model

    def start(self, feats, mask):
        self.visual.start(feats, mask)  # the visual graph and its OrtValues
        batch = feats.shape[0]
        shape = cache_shape(self.model, batch, int(self.model["max_text_len"]))
        self.buffers = [[ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2)]
                        for _ in range(2)]  # [key, value] x [ping, pong]
        self.cache_mask = np.zeros((batch, shape[3]), dtype=bool)
        self.position, self.current = 0, 0

    def step(self, ids, new_mask=None):
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input("position", np.array([self.position], dtype=np.int64))
        binding.bind_cpu_input("cache_mask", self.cache_mask)
        src, dst = self.current, 1 - self.current
        binding.bind_ortvalue_input("key_buf", self.buffers[0][src])
        binding.bind_ortvalue_input("value_buf", self.buffers[1][src])
        binding.bind_ortvalue_input("visual_key", self.visual.visual_key)
        binding.bind_ortvalue_input("visual_value", self.visual.visual_value)
        binding.bind_ortvalue_input("visual_mask", self.visual.visual_mask)
        binding.bind_output("logits", "cpu")
        binding.bind_ortvalue_output("key_out", self.buffers[0][dst])
        binding.bind_ortvalue_output("value_out", self.buffers[1][dst])
        self.session.run_with_iobinding(binding)
        self.cache_mask[:, self.position] = True
        self.position, self.current = self.position + 1, dst
        return binding.get_outputs()[0].numpy()


def decode(stepper, feats, mask, steps, bos):
    stepper.start(feats, mask)
    ids = np.full((feats.shape[0], 1), bos, dtype=np.int64)
    per_step, all_logits = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = stepper.step(ids)
        per_step.append(time.perf_counter() - t0)
        all_logits.append(logits[:, -1])
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
    return per_step, all_logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ {' '.join(['python', *sys.argv])}")
    bundle = Bundle.open(SHIPPED_CAPTION_BUNDLE)
    captioner = Captioner(bundle.path, threads=args.threads)
    decoder = load_caption_checkpoint().decoder
    growing = OrtStepper(bundle, threads=args.threads)
    fixed = FixedStepper(export_fixed(decoder, args.threads), OrtStepper(bundle, threads=args.threads), bundle.model)
    images = [render(generate_scene(s, num_objects=8)) for s in split_seeds("heldout", 8, start=5000)]
    steps = 40
    for batch in (1, 8):
        feats, mask = captioner.visual_inputs(images[:batch])
        _, a = decode(growing, feats, mask, steps, captioner.bos)
        _, b = decode(fixed, feats, mask, steps, captioner.bos)
        error = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
        timings = {}
        for name, stepper in (("growing", growing), ("fixed", fixed)):
            decode(stepper, feats, mask, steps, captioner.bos)
            runs = [decode(stepper, feats, mask, steps, captioner.bos)[0] for _ in range(args.runs)]
            timings[name] = np.median(np.array(runs), axis=0) * 1e3
            time.sleep(0.5)
        g, f = timings["growing"], timings["fixed"]
        print(f"B={batch}: logits max abs diff {error:.2e}; per step ms (median of {args.runs}) growing "
              f"total {g.sum():.2f} first {g[0]:.3f} last {g[-1]:.3f} | fixed total {f.sum():.2f} first "
              f"{f[0]:.3f} last {f[-1]:.3f} | fixed/growing {f.sum() / g.sum():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
