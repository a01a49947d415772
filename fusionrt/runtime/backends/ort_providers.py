"""ONNX Runtime execution providers: short names, the TensorRT provider's options from the manifest, option
name validation, and the check that the session got what was asked.

Measured with onnxruntime-gpu on a machine that cannot load its GPU providers (../shared/docs/tensorrt.md):
asking for TensorRT + CUDA raises nothing, prints one "EP Error ... Falling back" line to stdout (from C++,
so below Python's sys.stdout) and runs on CPU; misspelt option names are ignored. So option names are
validated here, stdout is captured at the file-descriptor level while the session is made, and the
providers the session really got are compared with the request afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import GraphSpec
from fusionrt.errors import BackendError

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
SHORT_NAMES = {"tensorrt": TENSORRT, "cuda": CUDA, "cpu": CPU}
GPU_PROVIDERS = (TENSORRT, CUDA)
INSTALL_GPU = "pip uninstall -y onnxruntime && pip install \"fusionrt[gpu]\" (\"fusionrt[gpu-cu13]\" for CUDA 13)"

# OrtTensorRTProviderOptionsV2 (onnxruntime include/onnxruntime/core/providers/tensorrt/tensorrt_provider_options.h);
# trt_bf16_enable is in the provider's option keys of recent releases (seen in onnxruntime's tensorrt_keys list and
# used with onnxruntime-gpu 1.26+ by others; an older onnxruntime ignores it when it cannot load the provider).
_TENSORRT_OPTION_NAMES = """
device_id has_user_compute_stream user_compute_stream trt_max_partition_iterations trt_min_subgraph_size
trt_max_workspace_size trt_fp16_enable trt_int8_enable trt_int8_calibration_table_name
trt_int8_use_native_calibration_table trt_dla_enable trt_dla_core trt_dump_subgraphs trt_engine_cache_enable
trt_engine_cache_path trt_engine_decryption_enable trt_engine_decryption_lib_path trt_force_sequential_engine_build
trt_context_memory_sharing_enable trt_layer_norm_fp32_fallback trt_timing_cache_enable trt_timing_cache_path
trt_force_timing_cache trt_detailed_build_log trt_build_heuristics_enable trt_sparsity_enable
trt_builder_optimization_level trt_auxiliary_streams trt_tactic_sources trt_extra_plugin_lib_paths
trt_profile_min_shapes trt_profile_max_shapes trt_profile_opt_shapes trt_cuda_graph_enable trt_dump_ep_context_model
trt_ep_context_file_path trt_ep_context_embed_mode trt_weight_stripped_engine_enable trt_onnx_model_folder_path
trt_engine_cache_prefix trt_engine_hw_compatible trt_op_types_to_exclude trt_bf16_enable
"""
# CUDA execution provider options (onnxruntime docs, "CUDA Execution Provider", Configuration Options)
_CUDA_OPTION_NAMES = """
device_id user_compute_stream has_user_compute_stream do_copy_in_default_stream use_ep_level_unified_stream
gpu_mem_limit arena_extend_strategy cudnn_conv_algo_search cudnn_conv_use_max_workspace cudnn_conv1d_pad_to_nc1d
enable_cuda_graph enable_skip_layer_norm_strict_mode use_tf32 gpu_external_alloc gpu_external_free
gpu_external_empty_cache prefer_nhwc tunable_op_enable tunable_op_tuning_enable tunable_op_max_tuning_duration_ms
sdpa_kernel fuse_conv_bias
"""
TENSORRT_OPTIONS = frozenset(_TENSORRT_OPTION_NAMES.split())
CUDA_OPTIONS = frozenset(_CUDA_OPTION_NAMES.split())
KNOWN_OPTIONS = {TENSORRT: TENSORRT_OPTIONS, CUDA: CUDA_OPTIONS, CPU: frozenset()}
ORT_TRT_CACHE_DIR = "engines/ort-trt"  # the provider's own engine and timing caches, inside the bundle


def provider_name(name: str) -> str:
    """``"tensorrt"`` -> ``TensorrtExecutionProvider``; full names pass through; anything else is refused."""
    full = SHORT_NAMES.get(name.lower(), name) if isinstance(name, str) else name
    if full not in KNOWN_OPTIONS:
        raise BackendError("providers", f"names among {sorted(SHORT_NAMES)} or {sorted(KNOWN_OPTIONS)}", repr(name))
    return full


def validate_options(provider: str, options: Mapping[str, Any]) -> None:
    """Refuse option names the provider does not document (ORT itself ignores them silently)."""
    unknown = sorted(set(options) - KNOWN_OPTIONS[provider])
    if unknown:
        import difflib

        hints = {u: difflib.get_close_matches(u, KNOWN_OPTIONS[provider], n=1) for u in unknown}
        text = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise BackendError(f"{provider} options", f"documented option names of {provider}", text)


def _shapes(graph: GraphSpec, which: int) -> str:
    """``input_ids:1x1,text_mask:1x1,...``: the manifest's min (0), opt (1) or max (2) of every input."""
    dims = {s: (r.min, r.opt, r.max)[which] for s, r in graph.dims.items()}
    return ",".join(f"{t.name}:" + "x".join(str(dims[d] if isinstance(d, str) else d) for d in t.shape)
                    for t in graph.inputs)


def tensorrt_options(bundle: Bundle, graph: GraphSpec, precision: str) -> dict[str, Any]:
    """The TensorRT provider's options from the manifest: one profile over min/opt/max, caches under the bundle,
    the precision flag of the graph's precision."""
    cache = str(bundle.path / ORT_TRT_CACHE_DIR)
    return {
        "trt_profile_min_shapes": _shapes(graph, 0), "trt_profile_opt_shapes": _shapes(graph, 1),
        "trt_profile_max_shapes": _shapes(graph, 2),
        "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
        "trt_fp16_enable": precision == "fp16",
        # The provider's network is weakly typed: with FP16 on, TensorRT may run in FP16 the LayerNorms our fp16
        # graph keeps in FP32 (they overflow after attention). This keeps them in FP32; nothing comparable exists
        # for Softmax, which is why `fusionrt build` (strongly typed) is the fp16 path we recommend.
        "trt_layer_norm_fp32_fallback": precision == "fp16",
        # The provider builds weakly typed networks: a Q/DQ graph needs the INT8 flag (TensorRT refuses INT8
        # layers otherwise) and no calibration table (its scales are in the graph; onnxruntime PR 8969).
        "trt_int8_enable": precision == "int8",
    }


def provider_list(requested: Sequence[str], bundle: Bundle, graph: GraphSpec, precision: str,
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``[(full name, options)]``: TensorRT's derived from the manifest, user options (validated) on top."""
    user = {provider_name(k): dict(v) for k, v in (options or {}).items()}
    out = []
    for name in (provider_name(p) for p in requested):
        merged = {**(tensorrt_options(bundle, graph, precision) if name == TENSORRT else {}), **user.get(name, {})}
        validate_options(name, merged)
        # ORT takes strings; its providers parse booleans as 0/1
        out.append((name, {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in merged.items()}))
    return out


@contextlib.contextmanager
def captured_stdout() -> Iterator[list[str]]:
    """Capture what native code prints on file descriptor 1 (ORT's "EP Error" line); yields the lines after."""
    lines: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            if text:
                sys.stdout.write(text)  # still show it: capture is for the error message, not to hide it


def check_providers(requested: Sequence[str], got: Sequence[str], printed: Sequence[str], available: Sequence[str],
                    allow_fallback: bool) -> None:
    """Refuse (or with ``allow_fallback`` warn) when a GPU provider that was asked for is not in the session."""
    missing = [p for p in requested if p in GPU_PROVIDERS and p not in got]
    if not missing:
        return
    reasons = [line.strip() for line in printed if "EP Error" in line or "Falling back" in line or "Error" in line]
    why = " | ".join(reasons[-3:]) if reasons else (
        f"not in this onnxruntime's available providers {list(available)} ({INSTALL_GPU})"
        if any(p not in available for p in missing) else "onnxruntime gave no reason")
    if allow_fallback:
        warnings.warn(f"onnxruntime: {', '.join(missing)} unavailable, running on {list(got)}: {why}",
                      RuntimeWarning, stacklevel=3)
        return
    raise BackendError("providers", f"{list(requested)} in the onnxruntime session (allow_fallback=True to run on "
                       "what loads)", f"a session without {', '.join(missing)} (got {list(got)}): {why}")

