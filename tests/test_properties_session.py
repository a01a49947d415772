"""Property: any feed either runs (finite outputs matching PyTorch) or raises InputError; nothing else.

Feeds are generated over names, dtypes, ranks, shapes (0-sized and over the max), NaN/Inf,
non-contiguous, big-endian and read-only arrays, and masks of any pattern.
"""

import numpy as np
import pytest
from hardening_support import LIMITS, feed, shared_bundle, tiny_model
from hypothesis import given
from hypothesis import strategies as st

from fusionrt.errors import InputError
from fusionrt.runtime import Session

NAMES = ("input_ids", "text_mask", "visual_feats", "visual_mask")
DTYPES = ("int64", "int32", "bool", "float32", "float64", "float16", ">f4", ">i8", "uint8")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    return Session(shared_bundle(tmp_path_factory)), Session(shared_bundle(tmp_path_factory), "torch",
                                                                    module=tiny_model())


@st.composite
def mutated_feeds(draw):
    """A valid feed of random sizes, then zero or more mutations of its arrays and keys."""
    batch = draw(st.integers(1, LIMITS["max_batch"]))
    text = draw(st.integers(1, LIMITS["max_text_len"]))
    visual = draw(st.integers(1, LIMITS["max_visual_len"]))
    out = feed(batch, text, visual, seed=draw(st.integers(0, 2**16)))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(NAMES))
        kind = draw(st.sampled_from(["dtype", "shape", "nonfinite", "noncontiguous", "readonly", "drop", "extra",
                                     "mask_pattern", "ids_range", "not_array", "empty"]))
        array = out.get(name)
        if array is None:
            continue
        if kind == "dtype":
            out[name] = array.astype(draw(st.sampled_from(DTYPES)))
        elif kind == "shape":
            shape = draw(st.lists(st.integers(0, 20), min_size=0, max_size=4))
            out[name] = np.zeros(shape, dtype=array.dtype)
        elif kind == "nonfinite" and array.dtype.kind == "f":
            array = array.copy()
            array.flat[draw(st.integers(0, max(0, array.size - 1)))] = draw(st.sampled_from([np.nan, np.inf,
                                                                                              -np.inf]))
            out[name] = array
        elif kind == "noncontiguous":
            wide = np.repeat(array, 2, axis=-1)
            out[name] = wide[..., ::2]  # same values, strided view
        elif kind == "readonly":
            array = array.copy()
            array.setflags(write=False)
            out[name] = array
        elif kind == "drop":
            del out[name]
        elif kind == "extra":
            out[draw(st.text(min_size=1, max_size=8))] = array
        elif kind == "mask_pattern" and array.dtype == bool:
            out[name] = np.asarray(draw(st.lists(st.booleans(), min_size=array.size, max_size=array.size)),
                                   bool).reshape(array.shape)
        elif kind == "ids_range" and name == "input_ids":
            out[name] = array + draw(st.sampled_from([-100, 1, 50, 2**40]))
        elif kind == "not_array":
            out[name] = array.tolist()
        elif kind == "empty":
            out[name] = array[:0]
    return out


@given(mutated_feeds())
def test_any_feed_runs_correctly_or_raises_input_error(sessions, data):
    ort, torch_session = sessions
    try:
        result = ort.run(data)
    except InputError:
        with pytest.raises(InputError):  # both backends share the same door
            torch_session.run(data)
        return
    expected = torch_session.run(data)
    for name, value in result.items():
        assert np.isfinite(value).all(), name
        np.testing.assert_allclose(value, expected[name], atol=1e-3, rtol=1e-3)


@given(st.sampled_from(NAMES), st.sampled_from(DTYPES))
def test_every_wrong_dtype_names_the_input(sessions, name, dtype):
    data = feed()
    if np.dtype(dtype) == data[name].dtype and np.dtype(dtype).isnative:
        return
    data[name] = data[name].astype(dtype)
    with pytest.raises(InputError, match=rf"^{name}: expected"):
        sessions[0].run(data)
