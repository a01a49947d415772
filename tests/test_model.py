import json

import numpy as np
import pytest
import torch

from fusionrt.errors import CheckpointError
from fusionrt.model import (
    Checkpoint,
    FusionConfig,
    FusionModel,
    RegionEncoder,
    count_parameters,
    load_checkpoint,
    load_model,
    preset,
    save_checkpoint,
)

TINY = FusionConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, visual_dim=12, num_answers=7,
                    max_text_len=16, max_visual_len=8)


def _inputs(config, batch=3, text=6, visual=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, text), generator=g)
    text_mask = torch.ones(batch, text, dtype=torch.bool)
    visual_feats = torch.randn(batch, visual, config.visual_dim, generator=g)
    visual_mask = torch.ones(batch, visual, dtype=torch.bool)
    if batch >= 3:
        text_mask[1, 4:] = False
        visual_mask[1, 2:] = False
        visual_mask[2, :] = False  # an image where nothing was detected
    return input_ids, text_mask, visual_feats, visual_mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FusionModel(TINY).eval()


def test_shape_contract(model):
    hidden, logits = model(*_inputs(TINY, batch=3, text=6, visual=5))
    assert hidden.shape == (3, 6, 32) and hidden.dtype == torch.float32
    assert logits.shape == (3, 7) and logits.dtype == torch.float32


def test_padded_positions_do_not_change_real_outputs(model):
    input_ids, text_mask, visual_feats, visual_mask = _inputs(TINY)
    hidden, logits = model(input_ids, text_mask, visual_feats, visual_mask)
    ids2, feats2 = input_ids.clone(), visual_feats.clone()
    ids2[~text_mask] = 7
    feats2[~visual_mask] = 1e3 * torch.randn_like(feats2[~visual_mask])
    hidden2, logits2 = model(ids2, text_mask, feats2, visual_mask)
    assert torch.allclose(hidden[text_mask], hidden2[text_mask], atol=1e-5)
    assert torch.allclose(logits, logits2, atol=1e-5)
    assert (hidden2[~text_mask] == 0).all()
    # Control: changing a real position does change the outputs.
    ids2[0, 0] = (ids2[0, 0] + 1) % TINY.vocab_size
    assert not torch.allclose(model(ids2, text_mask, feats2, visual_mask)[1][0], logits[0])


def test_extra_padding_length_does_not_change_outputs(model):
    input_ids, text_mask, visual_feats, visual_mask = _inputs(TINY, batch=1, text=4, visual=3)
    _, logits = model(input_ids, text_mask, visual_feats, visual_mask)
    pad_t = torch.cat([input_ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    pad_tm = torch.cat([text_mask, torch.zeros(1, 3, dtype=torch.bool)], 1)
    pad_v = torch.cat([visual_feats, torch.randn(1, 4, TINY.visual_dim)], 1)
    pad_vm = torch.cat([visual_mask, torch.zeros(1, 4, dtype=torch.bool)], 1)
    _, padded_logits = model(pad_t, pad_tm, pad_v, pad_vm)
    assert torch.allclose(logits, padded_logits, atol=1e-5)


def test_fully_masked_rows_are_finite(model):
    input_ids, text_mask, visual_feats, visual_mask = _inputs(TINY)
    text_mask[0] = False
    visual_mask[0] = False
    hidden, logits = model(input_ids, text_mask, visual_feats, visual_mask)
    assert torch.isfinite(hidden).all() and torch.isfinite(logits).all()
    assert (hidden[0] == 0).all()


def test_masks_stay_finite_in_float16(model):
    half = FusionModel(TINY).eval()
    half.load_state_dict(model.state_dict())
    input_ids, text_mask, visual_feats, visual_mask = _inputs(TINY)
    text_mask[0] = False
    visual_mask[0] = False
    hidden, logits = half.half()(input_ids, text_mask, visual_feats.half(), visual_mask)
    assert torch.isfinite(hidden).all() and torch.isfinite(logits).all()


def test_config_rejects_unrepresentable_mask_fill_and_bad_heads():
    with pytest.raises(ValueError, match="mask_fill"):
        FusionConfig(mask_fill=-1e9)
    with pytest.raises(ValueError, match="multiple of heads"):
        FusionConfig(hidden=30, heads=8)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_preset_sizes():
    small = count_parameters(FusionModel(preset("small")))
    large = count_parameters(FusionModel(preset("large")))
    assert 2e6 < small < 5e6
    assert 80e6 < large < 90e6  # BERT-base-sized stack (H=768, 12 layers)


def _tiny_checkpoint(question_encoder):
    torch.manual_seed(1)
    config = FusionConfig(**{**TINY.to_dict(), "vocab_size": question_encoder.vocab_size, "visual_dim": 69,
                             "num_answers": 22})
    return Checkpoint(FusionModel(config).eval(), RegionEncoder().eval(), question_encoder, [str(i) for i in range(22)])


def test_checkpoint_round_trip_is_bit_exact(tmp_path, question_encoder):
    checkpoint = _tiny_checkpoint(question_encoder)
    save_checkpoint(checkpoint, tmp_path / "ckpt", metrics={"accuracy": 0.5})
    loaded = load_checkpoint(tmp_path / "ckpt")
    for a, b in ((checkpoint.fusion, loaded.fusion), (checkpoint.region_encoder, loaded.region_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    inputs = _inputs(loaded.fusion.config)
    assert torch.equal(checkpoint.fusion(*inputs)[1], loaded.fusion(*inputs)[1])
    assert loaded.answers == checkpoint.answers
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_bad_checkpoints_give_clear_errors(tmp_path, question_encoder):
    save_checkpoint(_tiny_checkpoint(question_encoder), tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_model(tmp_path / "missing")
    (tmp_path / "c" / "fusion.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match=r"fusion\.safetensors"):
        load_model(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["version"] = 99
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="version"):
        load_model(tmp_path / "c")


def test_weights_of_another_shape_are_refused(tmp_path, question_encoder):
    save_checkpoint(_tiny_checkpoint(question_encoder), tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["model"]["layers"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "c")


def test_region_encoder_output_width():
    encoder = RegionEncoder()
    geometry = torch.rand(4, 5)
    feats = encoder(torch.rand(4, 3, 32, 32), geometry)
    assert feats.shape == (4, encoder.config.feature_dim)
    # Box geometry passes through, standardised by fixed constants.
    expected = (geometry - encoder.geometry_mean) / encoder.geometry_scale
    assert np.allclose(feats[:, -5:].detach().numpy(), expected.numpy())


def test_forward_makes_every_new_tensor_on_the_inputs_device(model):
    """A tensor made without ``device=`` lands on the CPU and is copied to the GPU on every call, which CUDA graph
    capture refuses (seen on an H200: "Cannot copy between CPU and CUDA tensors during CUDA graph capture").
    No GPU here, so the factory calls are watched instead."""
    from torch.overrides import TorchFunctionMode

    factories = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor}
    made_without_device = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in factories and kwargs.get("device") is None:
                made_without_device.append(func.__name__)
            return func(*args, **kwargs)

    inputs = _inputs(TINY)
    with Watch(), torch.inference_mode():
        model(*inputs)
    assert made_without_device == []
