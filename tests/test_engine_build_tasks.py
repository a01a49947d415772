"""`fusionrt build` on caption and match bundles (never run on a GPU): every graph built, the step graph with
decode profiles over P (S=1) and a full-range profile, values checked by value through Polygraphy's
CreateConfig and the fake TensorRT plan."""

import itertools
import json
import shutil
from pathlib import Path

import pytest
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import PLAN_MAGIC, fake_build_plan, make_fake_tensorrt

from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE
from fusionrt.cli import main
from fusionrt.engine.build import BuildEnvironment, build_engines
from fusionrt.engine.config import BuildOptions, create_config
from fusionrt.errors import InputError
from fusionrt.runtime import Bundle
from fusionrt.runtime.backends.tensorrt.device import cuda_device
from fusionrt.runtime.backends.tensorrt.entries import engine_entries
from fusionrt.runtime.backends.tensorrt.profiles import parse_spec, profiles_for, tightest_profile
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE


def fake_environment():
    cudart = FakeCudart()
    return BuildEnvironment(make_fake_tensorrt(cudart), cuda_device(0, cudart), fake_build_plan)


@pytest.fixture
def caption_copy(tmp_path):
    return Path(shutil.copytree(SHIPPED_CAPTION_BUNDLE, tmp_path / "caption"))


def test_step_graph_defaults_are_decode_buckets_over_p_then_the_full_range():
    bundle = Bundle.open(SHIPPED_CAPTION_BUNDLE)
    step = bundle.graph("caption_step")
    past, new = step.dims["P"], step.dims["S"]
    profiles = profiles_for(step)
    decode, full = profiles[:-1], profiles[-1]
    # S=1 buckets that tile P's declared range without gaps or overlaps
    assert [p.dims["S"] for p in decode] == [(1, 1, 1)] * len(decode) and len(decode) == 3
    assert decode[0].dims["P"][0] == past.min and decode[-1].dims["P"][2] == past.max
    assert all(a.dims["P"][2] + 1 == b.dims["P"][0] for a, b in itertools.pairwise(decode))
    assert all(lo <= opt <= hi for lo, opt, hi in (p.dims["P"] for p in decode))
    assert full.dims["S"] == (new.min, new.opt, new.max) and full.dims["P"] == (past.min, past.opt, past.max)
    assert all(p.dims["B"] == (step.dims["B"].min, step.dims["B"].opt, step.dims["B"].max) for p in profiles)
    assert all(p.dims["M"] == (1, step.dims["M"].opt, step.dims["M"].max) for p in profiles)
    assert all("K" not in p.dims for p in profiles)  # the present length is an output dim, not a profile dim
    # the visual graph: the manifest's one range over B and M
    (visual,) = profiles_for(bundle.graph("caption_visual"))
    assert visual.dims == {"B": (1, 1, 16), "M": (1, 8, 16)}
    # a --profiles spec replaces the defaults
    assert [p.dims["P"] for p in profiles_for(step, [parse_spec("P=0:4:8,S=1")])] == [(0, 4, 8)]
    with pytest.raises(InputError, match=r"manifest's range \[0, 47\]"):
        profiles_for(step, [parse_spec("P=0:4:48")])


def test_step_graph_profiles_reach_create_config_by_value(tmp_path):
    step = Bundle.open(SHIPPED_CAPTION_BUNDLE).graph("caption_step")
    fake = fake_environment().trt
    config = create_config(fake, step, profiles_for(step), BuildOptions(opt_level=4), tmp_path / "cache")
    # [L, B, H, P, D] = [2, B, 4, P, 32]; S=1 buckets, then prompts up to S=48
    assert [p["past_key"].min for p in config.profiles] == [(2, 1, 4, 0, 32), (2, 1, 4, 16, 32),
                                                            (2, 1, 4, 32, 32), (2, 1, 4, 0, 32)]
    assert [p["past_key"].max for p in config.profiles] == [(2, 16, 4, 15, 32), (2, 16, 4, 31, 32),
                                                            (2, 16, 4, 47, 32), (2, 16, 4, 47, 32)]
    assert [p["past_mask"].opt for p in config.profiles] == [(1, 7), (1, 23), (1, 39), (1, 24)]
    assert [p["input_ids"].max for p in config.profiles] == [(16, 1)] * 3 + [(16, 48)]
    assert all(p["visual_key"].max == (2, 16, 4, 16, 32) for p in config.profiles)
    assert config.builder_optimization_level == 4
    assert not (config.fp16 or config.int8)


def test_tightest_profile_picks_the_decode_bucket_of_the_past_length(caption_copy):
    build_engines(caption_copy, "fp32", graphs=["caption_step"], environment=fake_environment())
    (entry,) = engine_entries(Bundle.open(caption_copy))
    plan = json.loads((caption_copy / entry.file).read_bytes()[len(PLAN_MAGIC):])
    ranges = [{name: (tuple(s[0]), tuple(s[2])) for name, s in profile.items()} for profile in plan["profiles"]]

    def shapes(batch: int, new: int, past: int) -> dict:
        return {"input_ids": (batch, new), "new_mask": (batch, new), "past_mask": (batch, past),
                "past_key": (2, batch, 4, past, 32), "past_value": (2, batch, 4, past, 32),
                "visual_key": (2, batch, 4, 5, 32), "visual_value": (2, batch, 4, 5, 32), "visual_mask": (batch, 5)}

    assert [tightest_profile(ranges, shapes(2, 1, p)) for p in (0, 15, 16, 40, 47)] == [0, 0, 1, 2, 2]
    assert tightest_profile(ranges, shapes(1, 6, 0)) == 3  # a prompt: only the full range covers S > 1
    assert tightest_profile(ranges, shapes(17, 1, 0)) is None


def test_build_on_a_caption_bundle_builds_both_decoder_graphs_and_the_region_encoder(caption_copy):
    built = build_engines(caption_copy, "fp32", environment=fake_environment())
    assert sorted(b.entry.graph for b in built) == ["caption_step", "caption_visual", "region_encoder"]
    entries = {e.graph: e for e in engine_entries(Bundle.open(caption_copy))}  # hashes verified
    assert [p["P"] for p in entries["caption_step"].profiles] == [[0, 7, 15], [16, 23, 31], [32, 39, 47],
                                                                  [0, 24, 47]]
    assert entries["caption_visual"].profiles == [{"B": [1, 1, 16], "M": [1, 8, 16]}]
    assert (caption_copy / entries["caption_step"].file).read_bytes().startswith(PLAN_MAGIC)


def test_build_on_a_match_bundle_builds_all_four_graphs(tmp_path, monkeypatch, capsys):
    import fusionrt.cli.build as cli_build

    copy = Path(shutil.copytree(SHIPPED_MATCH_BUNDLE, tmp_path / "match"))
    monkeypatch.setattr(cli_build, "require_build_environment", fake_environment)
    assert main(["build", str(copy), "--precision", "fp32", "-q"]) == 0
    out = capsys.readouterr().out
    entries = {e.graph: e for e in engine_entries(Bundle.open(copy))}
    assert sorted(entries) == ["fusion", "image_embed", "region_encoder", "text_embed"]
    assert entries["region_encoder"].profiles == [{"N": [1, 16, 4096]}]
    assert entries["text_embed"].profiles == [{"B": [1, 1, 256], "T": [1, 16, 32]}]
    assert entries["image_embed"].profiles == [{"B": [1, 1, 256], "M": [1, 8, 16]}]
    assert entries["fusion"].profiles == [{"B": [1, 1, 256], "T": [1, 16, 32], "M": [1, 8, 16]}]
    assert out.count("cross-check: polygraphy run") == 4
