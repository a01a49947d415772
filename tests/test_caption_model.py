"""Captions in the scene world, the caption decoder's KV cache, its export with a cache, and a short training."""

from typing import ClassVar

import numpy as np
import pytest
import torch

from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.generate import beam_search, greedy
from fusionrt.caption.steppers import OrtStepper, TorchStepper
from fusionrt.data.caption_set import ordered_regions
from fusionrt.data.captions import caption_objects, caption_text, painted_corner
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.model.caption import CaptionConfig, CaptionDecoder


def test_caption_names_every_object_left_to_right_and_the_detector_meets_them_in_that_order(caption_tokens):
    lengths = []
    for seed in split_seeds("heldout", 150):
        scene = generate_scene(seed)
        text = caption_text(scene)
        objects = caption_objects(scene)
        assert text.count(" a ") + text.startswith("a ") == len(scene.objects)
        for obj in objects:
            assert f"a {obj.size} {obj.color} {obj.shape}" in text
        regions = ordered_regions(render(scene))
        assert [tuple(b[:2]) for b in regions.boxes] == [painted_corner(o) for o in objects]
        ids = caption_tokens.encode(text)  # refuses a word that is not one whole token
        assert ids[0] == 2 and ids[-1] == 3  # [CLS] as BOS, [SEP] as EOS
        lengths.append(len(ids))
    assert caption_text(generate_scene(3, num_objects=1)).count(",") == 0
    assert len(caption_tokens.encode(caption_text(generate_scene(3, num_objects=1)))) == 6
    assert len(caption_tokens.encode(caption_text(generate_scene(3, num_objects=8)))) == 41
    assert min(lengths) == 6 and max(lengths) == 41


@pytest.fixture(scope="module")
def tiny_decoder():
    torch.manual_seed(0)
    return CaptionDecoder(CaptionConfig(hidden=32, layers=2, heads=2, ffn=64)).eval()


def _visual(batch, regions, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, regions, 69)).astype(np.float32)
    mask = np.arange(regions)[None, :] < rng.integers(1, regions + 1, size=batch)[:, None]
    return feats, mask


def test_torch_cache_equals_full_recompute_at_every_step(tiny_decoder):
    feats, mask = _visual(3, 5)
    ids = torch.randint(4, 128, (3, 20))
    full = tiny_decoder(ids, torch.ones_like(ids, dtype=torch.bool), torch.from_numpy(feats), torch.from_numpy(mask))
    stepper = TorchStepper(tiny_decoder)
    stepper.start(feats, mask)
    first = stepper.step(ids[:, :4].numpy())  # a prompt of S=4, then one token at a time
    steps = [first] + [stepper.step(ids[:, i:i + 1].numpy()) for i in range(4, 20)]
    cached = np.concatenate(steps, axis=1)
    assert np.abs(cached - full.detach().numpy()).max() < 1e-5


def test_greedy_drop_finished_and_beam_width_one_agree_with_plain_greedy(tiny_decoder):
    feats, mask = _visual(4, 6, seed=1)
    stepper = TorchStepper(tiny_decoder)
    # EOS = a token the random model emits early for some rows and late for others
    eos = int(np.bincount(np.concatenate(greedy(stepper, feats, mask, bos=2, eos=-5, max_new_tokens=12))).argmax())
    kept = greedy(stepper, feats, mask, bos=2, eos=eos, max_new_tokens=12, drop_finished=False)
    dropped = greedy(stepper, feats, mask, bos=2, eos=eos, max_new_tokens=12)
    assert kept == dropped
    assert [ids for ids, _ in beam_search(stepper, feats, mask, bos=2, eos=eos, max_new_tokens=12, width=1)] == kept
    one_by_one = [greedy(stepper, feats[i:i + 1], mask[i:i + 1], bos=2, eos=eos, max_new_tokens=12)[0]
                  for i in range(4)]
    assert one_by_one == kept


class _TableStepper:
    """A stepper whose next-token distribution depends only on the previous token: greedy picks token 4
    (p=0.5) whose continuations are flat, beam search finds token 5 (p=0.4) followed by EOS (p=0.95)."""

    table: ClassVar = {2: {4: 0.5, 5: 0.4, 6: 0.1}, 4: {3: 0.3, 6: 0.35, 7: 0.35}, 5: {3: 0.95, 6: 0.05},
             6: {3: 1.0}, 7: {3: 1.0}}

    def start(self, feats, mask):
        self.batch, self.past_length = feats.shape[0], 0

    def step(self, ids, new_mask=None):
        probs = np.full((ids.shape[0], 1, 10), 1e-9)
        for row, token in enumerate(ids[:, -1]):
            for nxt, p in self.table.get(int(token), {3: 1.0}).items():
                probs[row, 0, nxt] = p
        return np.log(probs)

    def select(self, rows):
        self.batch = len(rows)


def test_beam_search_finds_the_more_probable_caption_greedy_misses():
    feats, mask = np.zeros((2, 1, 69), np.float32), np.ones((2, 1), bool)
    assert greedy(_TableStepper(), feats, mask, bos=2, eos=3, max_new_tokens=5) == [[4, 6, 3]] * 2
    best = beam_search(_TableStepper(), feats, mask, bos=2, eos=3, max_new_tokens=5, width=2)
    assert [ids for ids, _ in best] == [[5, 3]] * 2
    assert best[0][1] == pytest.approx(np.log(0.4 * 0.95))


def test_export_with_cache_verifies_on_the_p_s_grid_and_ort_cached_decoding_matches_torch(tiny_decoder, tmp_path,
                                                                                            caption_tokens):
    from fusionrt.export.caption import CAPTION_STEP, CAPTION_VISUAL, export_caption
    from fusionrt.model import load_checkpoint
    from fusionrt.model.caption_checkpoint import CaptionCheckpoint, save_caption_checkpoint

    checkpoint = save_caption_checkpoint(
        CaptionCheckpoint(tiny_decoder, load_checkpoint().region_encoder, caption_tokens), tmp_path / "ckpt")
    bundle = Bundle.open(export_caption(checkpoint, tmp_path / "bundle", max_batch=8))
    assert bundle.task == "caption"
    assert {CAPTION_VISUAL, CAPTION_STEP, "region_encoder"} <= set(bundle.graphs)
    step = bundle.manifest["verification"]["graphs"][CAPTION_STEP]
    assert step["worst"]["logits"]["max_abs"] < 1e-4 and step["points"] >= 30
    assert bundle.graph(CAPTION_STEP).dims["P"].min == 0
    # cached decoding on ORT vs the torch model recomputing the whole prefix at every step
    feats, mask = _visual(3, 4, seed=2)
    ort = OrtStepper(bundle)
    ort.start(feats, mask)
    ids = np.full((3, 1), 2, dtype=np.int64)
    history = ids
    worst = 0.0
    for _ in range(12):
        logits = ort.step(ids)[:, -1]
        full = tiny_decoder(torch.from_numpy(history), torch.ones(history.shape, dtype=torch.bool),
                            torch.from_numpy(feats), torch.from_numpy(mask))[:, -1].detach().numpy()
        worst = max(worst, float(np.abs(logits - full).max()))
        ids = logits.argmax(-1)[:, None]
        history = np.concatenate([history, ids], axis=1)
    assert worst < 1e-4
    assert ort.past_length == 12


def test_caption_training_short_schedule_lowers_the_loss():
    from fusionrt.train_caption import train_caption
    from fusionrt.train_config import CaptionTrainConfig

    metrics = train_caption(CaptionTrainConfig(train_scenes=120, heldout_scenes=10, steps=30, batch_scenes=16,
                                               warmup_steps=5, model_overrides={"hidden": 64, "ffn": 128}),
                            None, progress=False)
    first, last = metrics["loss_every_10_steps"][0], metrics["loss_every_10_steps"][-1]
    assert last < 0.6 * first, metrics["loss_every_10_steps"]
    assert 0.0 <= metrics["exact_match"] <= 1.0
