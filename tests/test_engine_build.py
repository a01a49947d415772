"""`fusionrt build` without a GPU: profiles and builder options by value, plan files and manifest entries
(through a fake build environment), bundle file-name safety, and the refusal when TensorRT/GPU are missing."""

import json
import os
import shutil
from pathlib import Path

import pytest
from fakes.bundles import export_tiny_bundle
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import PLAN_MAGIC, fake_build_plan, make_fake_tensorrt

from fusionrt.cli import main
from fusionrt.engine.build import BuildEnvironment, build_engines
from fusionrt.engine.config import BuildOptions, create_config
from fusionrt.errors import InputError
from fusionrt.runtime import Bundle, BundleError
from fusionrt.runtime.backends.tensorrt.device import cuda_device
from fusionrt.runtime.backends.tensorrt.entries import engine_entries
from fusionrt.runtime.backends.tensorrt.errors import BuildError
from fusionrt.runtime.backends.tensorrt.profiles import default_profile, parse_spec, profiles_for


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("engine") / "bundle")


@pytest.fixture
def copy(bundle, tmp_path):
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def fake_environment(**device):
    cudart = FakeCudart(**device)
    return BuildEnvironment(make_fake_tensorrt(cudart), cuda_device(0, cudart), fake_build_plan)


def test_profile_spec_parsing_and_refusals(bundle):
    assert parse_spec("B=1:2:8, T=4") == {"B": (1, 2, 8), "T": (4, 4, 4)}
    for bad in ("B", "B=1:2", "B=x:1:2", "=1:1:1", ""):
        with pytest.raises(InputError, match="--profiles"):
            parse_spec(bad)
    graph = Bundle.open(bundle).graph("fusion")
    with pytest.raises(InputError, match=r"manifest's range \[1, 16\]"):
        profiles_for(graph, [parse_spec("B=1:1:32")])
    with pytest.raises(InputError, match="min <= opt <= max"):
        profiles_for(graph, [parse_spec("B=4:2:8")])


def test_profiles_from_manifest_and_buckets_give_per_input_shapes(bundle):
    graph = Bundle.open(bundle).graph("fusion")
    (only,) = profiles_for(graph)
    assert only == default_profile(graph)
    shapes = only.input_shapes(graph)
    # B 1..16 (opt 1), T 1..16 (opt 8), M 1..8 (opt 4), visual_dim 12 static: straight from the export sizes
    assert shapes["input_ids"] == ((1, 1), (1, 8), (16, 16))
    assert shapes["visual_feats"] == ((1, 1, 12), (1, 4, 12), (16, 8, 12))
    small, large = profiles_for(graph, [parse_spec("B=1:1:4"), parse_spec("B=5:8:16")])
    assert small.input_shapes(graph)["visual_mask"] == ((1, 1), (1, 4), (4, 8))
    assert large.input_shapes(graph)["input_ids"] == ((5, 1), (8, 8), (16, 16))
    # a spec naming none of a graph's dims leaves that graph on the manifest's profile
    region = {"N": (1, 2, 3)}
    assert profiles_for(graph, [region]) == [only]


def test_builder_options_reach_polygraphy_create_config_by_value(bundle, tmp_path):
    graph = Bundle.open(bundle).graph("fusion")
    fake = fake_environment().trt
    cache = tmp_path / "timing.cache"
    options = BuildOptions(workspace_mb=256, opt_level=5, version_compatible=True)
    config = create_config(fake, graph, profiles_for(graph, [parse_spec("B=1:1:4"), parse_spec("B=5:8:16")]),
                           options, cache)
    assert config.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 256 * 2**20}
    assert config.builder_optimization_level == 5
    assert config.version_compatible is True
    assert config.timing_cache_path is None  # no cache file yet: nothing to load
    assert [p["input_ids"].min for p in config.profiles] == [(1, 1), (5, 1)]
    assert [p["input_ids"].opt for p in config.profiles] == [(1, 8), (8, 8)]
    assert [p["visual_feats"].max for p in config.profiles] == [(4, 8, 12), (16, 8, 12)]
    assert not (config.fp16 or config.int8)  # precision comes from the graph, never from builder flags
    cache.write_bytes(b"x")
    assert create_config(fake, graph, profiles_for(graph), BuildOptions(), cache).timing_cache_path == str(cache)
    with pytest.raises(InputError, match="--opt-level"):
        BuildOptions(opt_level=6)
    with pytest.raises(InputError, match="--workspace-mb"):
        BuildOptions(workspace_mb=0)


def test_build_writes_plans_under_engines_and_records_them(copy):
    env = fake_environment()
    built = build_engines(copy, "fp32", profile_specs=[parse_spec("B=1:1:4"), parse_spec("B=5:8:16")],
                          options=BuildOptions(workspace_mb=64, opt_level=1), environment=env)
    reopened = Bundle.open(copy)  # verifies every hash, the plans' included
    graphs = sorted(b.entry.graph for b in built)
    assert graphs == sorted(g for g, s in reopened.graphs.items() if "fp32" in s.precisions)
    entries = {e.graph: e for e in engine_entries(reopened)}
    fusion = entries["fusion"]
    assert fusion.file == "engines/fusion.fp32.nvidia-h100-80gb-hbm3.trt11.4.0.106.plan"
    assert (copy / fusion.file).read_bytes().startswith(PLAN_MAGIC)
    assert reopened.manifest["files"][fusion.file]["sha256"] == fusion.plan_sha256
    assert fusion.onnx_sha256 == reopened.manifest["files"]["fusion.onnx"]["sha256"]
    assert (fusion.tensorrt, fusion.gpu, fusion.compute_capability) == ("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0")
    assert [p["B"] for p in fusion.profiles] == [[1, 1, 4], [5, 8, 16]]
    assert fusion.builder_options["workspace_mb"] == 64 and fusion.builder_options["opt_level"] == 1
    assert Path(fusion.builder_options["timing_cache"]).is_file()
    if "region_encoder" in entries:  # the B buckets do not apply to N: the manifest's one profile
        assert len(entries["region_encoder"].profiles) == 1
    # a second build for another GPU adds an entry beside the first
    build_engines(copy, "fp32", graphs=["fusion"], environment=fake_environment(name="Orin", capability=(8, 7)))
    assert len([e for e in engine_entries(Bundle.open(copy)) if e.graph == "fusion"]) == 2


def test_build_refuses_unknown_profile_dims_and_missing_precision(copy):
    with pytest.raises(InputError, match="unknown dims"):
        build_engines(copy, "fp32", profile_specs=[{"Q": (1, 1, 2)}], environment=fake_environment())
    with pytest.raises(InputError, match="--precision"):
        build_engines(copy, "int8", environment=fake_environment())
    assert not (copy / "engines").exists() or not any((copy / "engines").glob("*.plan"))


def _snapshot(path):
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_cli_build_without_tensorrt_or_gpu_says_which_in_one_line_exit_2_nothing_written(copy, capsys):
    before = _snapshot(copy)
    assert main(["build", str(copy), "--precision", "int8", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "missing TensorRT" in err and "https://pypi.nvidia.com tensorrt-cu12" in err and "JetPack" in err
    try:
        from cuda.bindings import runtime as cudart

        has_gpu = int(cudart.cudaGetDeviceCount()[0]) == 0 and cudart.cudaGetDeviceCount()[1] > 0
    except ImportError:
        has_gpu = False
    if not has_gpu:
        assert "a CUDA device" in err
    assert "nothing was written" in err
    assert _snapshot(copy) == before


@pytest.mark.parametrize("name", ["../x.onnx", "engines/../x", "engines/a/b.plan", "/etc/passwd", "other/x.plan",
                                  "engines/", "engines\\x"])
def test_manifest_file_names_stay_inside_the_bundle(copy, name):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain file names"):
        Bundle.open(copy)


def test_engines_dir_linked_out_of_the_bundle_is_refused(copy, tmp_path):
    build_engines(copy, "fp32", graphs=["fusion"], environment=fake_environment())
    outside = tmp_path / "outside"
    shutil.move(copy / "engines", outside)
    os.symlink(outside, copy / "engines")
    with pytest.raises(BundleError, match="a file inside the bundle"):
        Bundle.open(copy)


def test_cli_build_reports_size_time_profiles_and_the_cross_check(copy, capsys, monkeypatch):
    import fusionrt.cli.build as cli_build

    monkeypatch.setattr(cli_build, "require_build_environment", fake_environment)  # the name the command calls
    assert main(["build", str(copy), "--precision", "fp32", "--graph", "fusion", "--profiles", "B=1:1:4",
                 "--profiles", "B=5:8:16", "--opt-level", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "engines/fusion.fp32.nvidia-h100-80gb-hbm3.trt11.4.0.106.plan:" in out and " MiB, built in " in out
    assert "B=1:1:4" in out and "B=5:8:16" in out
    assert "cross-check: polygraphy run" in out and "--trt-max-shapes 'input_ids:[4,16]'" in out
    (entry,) = engine_entries(Bundle.open(copy))
    assert entry.builder_options["opt_level"] == 2
    assert main(["build", str(copy), "--profiles", "B=1:2", "-q"]) == 2  # a malformed spec is bad usage


def test_polygraphy_path_without_tensorrt_is_a_build_error_on_one_line(bundle):
    """The real Polygraphy loaders: without TensorRT they stop at their lazy import."""
    from fusionrt.engine.build import polygraphy_build_plan

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    with pytest.raises(BuildError) as info:
        polygraphy_build_plan(Path(bundle) / "fusion.onnx", None, Path(bundle) / "unused.cache")
    assert "fusion.onnx" in str(info.value) and "tensorrt" in str(info.value)
    assert "\n" not in str(info.value)


def test_parser_errors_logged_by_polygraphy_end_up_in_the_build_error(bundle, monkeypatch):
    """Polygraphy logs each parser error (node, operator) through its logger, then raises: both reach our error."""
    import polygraphy.backend.trt as polygraphy_trt
    from polygraphy.logger import G_LOGGER

    from fusionrt.engine.build import polygraphy_build_plan

    class FailingBuild:
        def __init__(self, network, config=None, save_timing_cache=None):
            pass

        def __call__(self):
            G_LOGGER.error("In node 17 with name: /layers.0/attn/MatMul_1 and operator: MatMul (parseNode): "
                           "INVALID_NODE: unsupported input type")
            G_LOGGER.critical("Could not parse ONNX correctly")

    monkeypatch.setattr(polygraphy_trt, "EngineBytesFromNetwork", FailingBuild)
    with pytest.raises(BuildError, match=r"Could not parse ONNX correctly \| .*name: /layers\.0/attn/MatMul_1 and "
                                         r"operator: MatMul"):
        polygraphy_build_plan(Path(bundle) / "fusion.onnx", None, Path(bundle) / "unused.cache")


def test_a_rebuild_that_fails_midway_leaves_the_previous_plans_valid(copy):
    """Plans go through one bundle transaction: when the second graph's build fails, the first graph's new
    plan was never published, so the bundle still verifies (the code before rewrote each plan in place and
    updated the manifest last: its first plan then no longer matched its recorded hash)."""
    build_engines(copy, "fp32", environment=fake_environment())
    before = Bundle.open(copy).manifest["engines"]
    env = fake_environment()
    calls = []

    def second_build_fails(onnx_path, config, cache):
        calls.append(onnx_path.name)
        if len(calls) == 2:
            raise BuildError(onnx_path.name, "a plan", "a planted failure")
        return fake_build_plan(onnx_path, config, cache) + b"rebuilt"

    with pytest.raises(BuildError, match="planted"):  # the tiny bundle has one graph: build it twice in one call
        build_engines(copy, "fp32", graphs=["fusion", "fusion"],
                      environment=BuildEnvironment(env.trt, env.device, second_build_fails))
    assert len(calls) == 2
    assert Bundle.open(copy).manifest["engines"] == before  # every hash checked: the old plans, untouched


def test_a_rebuild_under_the_same_plan_name_replaces_the_plan(copy):
    build_engines(copy, "fp32", graphs=["fusion"], environment=fake_environment())
    before = Bundle.open(copy)
    ((file, entry),) = before.manifest["engines"].items()
    old_bytes = before.file(file).read_bytes()
    build_engines(copy, "fp32", graphs=["fusion"], profile_specs=[parse_spec("B=1:2:3")],
                  environment=fake_environment())
    after = Bundle.open(copy)  # every hash, the new plan's included
    ((new_file, new_entry),) = after.manifest["engines"].items()
    assert new_file == file and new_entry["plan_sha256"] != entry["plan_sha256"]
    assert after.file(new_file).read_bytes() != old_bytes
    assert sorted(p.name for p in (copy / "engines").glob("*.plan")) == [file.split("/")[1]]


def test_workspace_is_capped_on_integrated_gpus_only_and_recorded(copy):
    """Defect 8: the workspace cap was 1 GiB even on a 141 GB H200; TensorRT's default is the device's memory."""
    graph = Bundle.open(copy).graph("fusion")
    fake = fake_environment().trt
    h200 = fake_environment(name="NVIDIA H200", memory_gib=141).device
    orin = fake_environment(name="Orin", capability=(8, 7), integrated=True, memory_gib=32).device
    assert (h200.integrated, orin.integrated) == (False, True)
    uncapped = create_config(fake, graph, profiles_for(graph), BuildOptions(), None, h200)
    assert not uncapped.memory_pool_limits  # no cap: TensorRT may use the device's memory
    capped = create_config(fake, graph, profiles_for(graph), BuildOptions(), None, orin)
    assert capped.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 1024 << 20}
    asked = create_config(fake, graph, profiles_for(graph), BuildOptions(workspace_mb=4096), None, h200)
    assert asked.memory_pool_limits == {fake.MemoryPoolType.WORKSPACE: 4096 << 20}
    (fusion,) = [b.entry for b in build_engines(copy, "fp32", graphs=["fusion"],
                                                environment=fake_environment(integrated=True))]
    assert fusion.builder_options["workspace_mb"] == 1024


def test_exclude_lean_runtime_needs_version_compatible_and_reaches_polygraphy(bundle):
    graph = Bundle.open(bundle).graph("fusion")
    fake = fake_environment().trt
    options = BuildOptions(version_compatible=True, exclude_lean_runtime=True)
    config = create_config(fake, graph, profiles_for(graph), options, None)
    assert config.version_compatible is True and config.exclude_lean_runtime is True
    with pytest.raises(InputError, match="--exclude-lean-runtime"):
        BuildOptions(exclude_lean_runtime=True)
