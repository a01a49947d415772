"""The KV-cache forms of the caption bundle (growing Concat, fixed-capacity buffer), the per-backend choice,
and what a finished row costs in batched greedy decoding."""

import shutil

import numpy as np
import pytest
import torch

from fusionrt.bench.caption_forms import choose, choose_cache_forms
from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.transaction import update_manifest
from fusionrt.caption.buffer import OpenVinoBufferStepper, OrtBufferStepper
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.forms import DEFAULT_FORMS, FORMS, MANIFEST_SECTION, cache_form, make_stepper
from fusionrt.caption.generate import greedy
from fusionrt.errors import InputError
from fusionrt.model.caption_checkpoint import load_caption_checkpoint


@pytest.fixture(scope="module")
def bundle():
    return Bundle.open(SHIPPED_CAPTION_BUNDLE)


@pytest.fixture(scope="module")
def decoder():
    return load_caption_checkpoint().decoder.eval()


def _visual(batch, regions, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, regions, 69)).astype(np.float32)
    mask = np.arange(regions)[None, :] < rng.integers(1, regions + 1, size=batch)[:, None]
    mask[0] = True
    return feats, mask


def test_the_buffer_graph_is_verified_in_the_shipped_bundle(bundle):
    entry = bundle.manifest["verification"]["graphs"]["caption_step_buffer"]
    assert entry["points"] >= 30 and entry["worst"]["logits"]["max_abs"] < 1e-4
    assert bundle.graph("caption_step_buffer").input("cache_key").shape[3] == bundle.model["max_text_len"]


@pytest.mark.parametrize("backend", sorted(FORMS))
def test_every_form_decodes_like_full_recompute_at_every_step(bundle, decoder, backend):
    sequences = []
    for seed, length in ((3, 47), (4, 20)):  # the second, shorter one reuses buffers holding the first's values
        feats, mask = _visual(3, 6, seed=seed)
        ids = torch.randint(4, 128, (3, length), generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            full = decoder(ids, torch.ones(ids.shape, dtype=torch.bool), torch.from_numpy(feats),
                           torch.from_numpy(mask)).numpy()
        sequences.append((feats, mask, ids.numpy(), full))
    for form in ("concat", "buffer"):
        stepper = make_stepper(bundle, backend, form=form)
        for feats, mask, ids, full in sequences:
            stepper.start(feats, mask)
            steps = [stepper.step(ids[:, :4])]  # a prompt of S=4, then one token at a time (to capacity)
            steps += [stepper.step(ids[:, i:i + 1]) for i in range(4, ids.shape[1])]
            assert np.abs(np.concatenate(steps, axis=1) - full).max() < 1e-4, (backend, form)
            if ids.shape[1] == 47:
                with pytest.raises(InputError, match="text positions"):
                    stepper.step(ids[:, :2])


@pytest.mark.parametrize("stepper_class", [OrtBufferStepper, OpenVinoBufferStepper])
def test_buffer_form_rows_selected_mid_sequence_keep_their_own_cache(bundle, decoder, stepper_class):
    feats, mask = _visual(4, 5, seed=4)
    ids = np.random.default_rng(5).integers(4, 128, size=(4, 12))
    stepper = stepper_class(bundle)
    stepper.start(feats, mask)
    for i in range(6):
        stepper.step(ids[:, i:i + 1])
    rows = np.array([3, 1, 1])  # drop, reorder and repeat rows (beam search, finished rows)
    stepper.select(rows)
    tail = np.concatenate([stepper.step(ids[rows, i:i + 1]) for i in range(6, 12)], axis=1)
    with torch.inference_mode():
        full = decoder(torch.from_numpy(ids[rows]), torch.ones((3, 12), dtype=torch.bool),
                       torch.from_numpy(feats[rows]), torch.from_numpy(mask[rows])).numpy()
    assert np.abs(tail - full[:, 6:]).max() < 1e-4


class _CountingStepper:
    """Wraps a stepper and counts the rows each step runs."""

    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def start(self, feats, mask):
        self.rows = []
        self.inner.start(feats, mask)

    def step(self, ids, new_mask=None):
        self.rows.append(ids.shape[0])
        return self.inner.step(ids, new_mask)

    def select(self, rows):
        self.inner.select(rows)


@pytest.mark.parametrize("form", ["concat", "buffer"])
def test_a_finished_row_costs_nothing_after_its_eos_when_dropped(bundle, form):
    from fusionrt.data.world import generate_scene, render, split_seeds

    captioner = Captioner()
    images = [render(generate_scene(seed, num_objects=n)) for seed, n in
              zip(split_seeds("heldout", 3, start=900), (1, 4, 8), strict=True)]
    feats, mask = captioner.visual_inputs(images)
    counting = _CountingStepper(make_stepper(bundle, "onnxruntime", form=form))
    kwargs = {"bos": captioner.bos, "eos": captioner.eos, "max_new_tokens": captioner.max_new_tokens}
    dropped = greedy(counting, feats, mask, **kwargs)
    dropped_rows = counting.rows
    kept = greedy(counting, feats, mask, drop_finished=False, **kwargs)
    assert kept == dropped
    lengths = sorted(len(ids) for ids in dropped)
    assert lengths[0] < lengths[1] < lengths[2]  # rows finish at different steps
    assert sum(dropped_rows) == sum(lengths)  # each row runs exactly until its EOS
    assert counting.rows == [3] * lengths[2]  # kept: every row runs until the longest ends


def test_cache_form_default_recorded_and_fallback(bundle, tmp_path):
    assert {b: cache_form(bundle, b) for b in FORMS} == DEFAULT_FORMS
    assert cache_form(bundle, "onnxruntime", "int8") == "concat"  # no buffer graph at that precision
    with pytest.raises(InputError):
        cache_form(bundle, "tensorflow")
    with pytest.raises(InputError):
        make_stepper(bundle, "onnxruntime", form="ring")
    copy = tmp_path / "bundle"
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, copy)
    flipped = {b: ("buffer" if f == "concat" else "concat") for b, f in DEFAULT_FORMS.items()}
    update_manifest(copy, sections={MANIFEST_SECTION: {"choice": flipped}})
    opened = Bundle.open(copy)
    for backend, form in flipped.items():
        assert type(make_stepper(opened, backend)) is FORMS[backend][form]
    assert type(Captioner(copy, backend="openvino").stepper) is FORMS["openvino"][flipped["openvino"]]


def test_choose_cache_forms_records_the_faster_measured_form(tmp_path):
    assert choose({"onnxruntime": {"concat": {"B=1": 2.0, "B=8": 8.0}, "buffer": {"B=1": 3.0, "B=8": 4.0}}}) \
        == {"onnxruntime": "buffer"}  # geometric means 4.0 vs 3.46
    copy = tmp_path / "bundle"
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, copy)
    section = choose_cache_forms(copy, command="test", backends=("onnxruntime",), batches=(1, 2), steps=3, runs=2)
    forms = section["decode_ms"]["onnxruntime"]
    assert set(forms) == {"concat", "buffer"} and all(ms > 0 for f in forms.values() for ms in f.values())
    recorded = Bundle.open(copy).manifest[MANIFEST_SECTION]
    assert recorded["choice"]["onnxruntime"] == choose(section["decode_ms"])["onnxruntime"]
    assert type(Captioner(copy).stepper) is FORMS["onnxruntime"][recorded["choice"]["onnxruntime"]]
