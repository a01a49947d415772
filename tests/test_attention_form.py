"""The attention form TensorRT can fuse: an additive [B,1,1,S] mask bias between the scaled Q K^T and the Softmax.

The shipped weights are unchanged; the former ``Where`` form is re-implemented here from the same modules as the
reference, so the comparison catches any change of the outputs the graph form would bring.
"""

import collections

import numpy as np
import onnx
import pytest
import torch

from fusionrt.model import SHIPPED_CHECKPOINT, load_model
from fusionrt.parity import fusion_feed
from fusionrt.runtime import Bundle


def where_form_forward(model, input_ids, text_mask, visual_feats, visual_mask):
    """The model as exported before issue 7: ``masked_fill`` on the scores, zeroed probabilities on empty rows."""
    positions = torch.arange(input_ids.shape[1])
    text = model.text_norm(model.token_embedding(input_ids) + model.position_embedding(positions)[None])
    visual = model.visual_norm(model.visual_projection(visual_feats))
    allowed = torch.cat([text_mask, visual_mask], dim=1)[:, None, None, :]
    for layer in model.layers:
        att, x = layer.attention, layer.attention_norm(text)
        keys_values = torch.cat([x, visual], dim=1)
        q = att._split(att.query(x) * att.scale)
        k, v = att._split(att.key(keys_values)), att._split(att.value(keys_values))
        scores = torch.matmul(q, k.transpose(-1, -2)).masked_fill(~allowed, model.config.mask_fill)
        probs = torch.softmax(scores, dim=-1).masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        text = text + att.out(context)
        text = text + layer.feed_forward(layer.feed_forward_norm(text))
    text = model.final_norm(text)
    keep = text_mask[:, :, None].to(text.dtype)
    hidden = text * keep
    return hidden, model.classifier(hidden.sum(dim=1) / keep.sum(dim=1).clamp(min=1.0))


@pytest.fixture(scope="module")
def shipped():
    return load_model(SHIPPED_CHECKPOINT).eval()


@pytest.mark.parametrize(("batch", "text_len", "visual_len"), [(8, 12, 8), (8, 32, 16), (2, 1, 1), (4, 5, 3)])
def test_shipped_outputs_equal_the_former_where_form(shipped, batch, text_len, visual_len):
    spec = _spec(shipped)
    feed = fusion_feed(spec, batch, text_len, visual_len, np.random.default_rng(batch * 100 + text_len))
    args = [torch.from_numpy(feed[k]) for k in ("input_ids", "text_mask", "visual_feats", "visual_mask")]
    with torch.inference_mode():
        hidden, logits = shipped(*args)
        old_hidden, old_logits = where_form_forward(shipped, *args)
    assert torch.isfinite(hidden).all() and torch.isfinite(logits).all()
    assert (hidden - old_hidden).abs().max().item() <= 1e-5
    assert (logits - old_logits).abs().max().item() <= 1e-5


def test_fully_masked_rows_give_zero_attention_not_nan(shipped):
    layer = shipped.layers[0].attention
    from fusionrt.model.fusion import attention_mask_terms

    text = torch.randn(2, 3, shipped.config.hidden)
    visual = torch.randn(2, 4, shipped.config.hidden)
    key_mask = torch.zeros(2, 7, dtype=torch.bool)
    key_mask[0, :2] = True  # row 0 has keys, row 1 none
    bias, has_key = attention_mask_terms(key_mask, shipped.config.mask_fill, text.dtype)
    assert bias.shape == (2, 1, 1, 7) and has_key.shape == (2, 1, 1, 1)
    assert has_key.flatten().tolist() == [1.0, 0.0]
    assert set(bias.unique().tolist()) == {0.0, shipped.config.mask_fill}
    with torch.inference_mode():
        out = layer(text, visual, bias, has_key)
    assert torch.isfinite(out).all()
    # zero context: only the output projection's bias remains for the keyless row
    assert torch.allclose(out[1], layer.out.bias.expand(3, -1))
    assert not torch.allclose(out[0], layer.out.bias.expand(3, -1))


def _spec(model):
    from fusionrt.export.contract import fusion_spec

    c = model.config
    return fusion_spec(vocab_size=c.vocab_size, visual_dim=c.visual_dim, hidden=c.hidden, num_answers=c.num_answers,
                       max_text_len=c.max_text_len, max_visual_len=c.max_visual_len, max_batch=8)


@pytest.fixture(scope="module")
def fusion_graph(tmp_path_factory):
    from fusionrt.export import export_checkpoint

    bundle = export_checkpoint(None, tmp_path_factory.mktemp("attn") / "bundle")  # verifies the parity grid
    return onnx.shape_inference.infer_shapes(onnx.load(str(Bundle.open(bundle).graph_path("fusion"))))


def mha_patterns(model):
    """Every ``MatMul(Q*scale, K^T) -> Add(mask bias) -> Softmax -> MatMul(., V)`` chain of the graph, as the
    TensorRT MHA fusion (tensorrt.md) and ModelOpt's QK_AV matcher look for it: nothing between the MatMuls but
    the Add and the Softmax, Softmax on the last axis, a bias of shape [B,1,1,S] computed from the masks only."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}

    def upstream_inputs(name, seen=None):
        seen = set() if seen is None else seen
        if name in seen:
            return set()
        seen.add(name)
        node = producer.get(name)
        if node is None:
            return {name}
        return set().union(*(upstream_inputs(i, seen) for i in node.input if i))

    found = []
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        add = producer.get(softmax.input[0])
        if axis not in (-1, 3) or add is None or add.op_type != "Add":
            continue
        sides = [producer.get(i) for i in add.input]
        qk = next((s for s in sides if s is not None and s.op_type == "MatMul"), None)
        bias = next((i for i, s in zip(add.input, sides, strict=True) if s is not qk), None)
        users = consumers[softmax.output[0]]
        if qk is None or bias is None or len(users) != 1 or users[0].op_type != "MatMul":
            continue
        bias_shape = shapes.get(bias)
        if bias_shape is None or len(bias_shape) != 4 or bias_shape[1:3] != [1, 1]:
            continue
        graph_inputs = {i.name for i in graph.input}
        if upstream_inputs(bias) & graph_inputs != {"text_mask", "visual_mask"}:
            continue
        found.append((qk.name, add.name, softmax.name, users[0].name))
    return found


def test_exported_graph_has_one_fusable_attention_pattern_per_layer(shipped, fusion_graph):
    found = mha_patterns(fusion_graph)
    assert len(found) == shipped.config.layers, found
    ops = collections.Counter(n.op_type for n in fusion_graph.graph.node)
    assert ops["Softmax"] == shipped.config.layers
    assert ops["Where"] == 1  # the one mask bias, shared by every layer
    assert ops["Not"] == 0
