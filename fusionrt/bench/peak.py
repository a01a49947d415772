"""This CPU's compute peak, two ways: on paper (cores x SIMD lanes x FMA x clock) and measured with a large GEMM.

The paper figure is stated with every assumption (read from /proc/cpuinfo; FMA pipes per core is not
readable there and is an assumption: 2 on current x86 server cores). The measured figure is a large
fp32 MatMul on ONNX Runtime (the same MLAS kernels the graphs use) and a large u8 x s8 MatMulInteger for
INT8, timed in the same run as the graphs so both see the same machine load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionrt.bench.timing import median_ms
from fusionrt.runtime.backends.onnxrt import import_onnxruntime
from fusionrt.runtime.cpu import CpuInfo, this_cpu

FMA_PIPES_PER_CORE = 2  # Zen 2-4, Skylake-SP and later: two 256/512-bit FMA pipes (assumption, not detectable)


@dataclass
class PaperPeak:
    """Peak FLOP/s (fp32) and int8 op/s on paper, with the inputs it came from."""

    cores: int
    clock_ghz: float
    fp32_lanes: int
    fma: bool
    vnni: bool
    fp32_flops: float
    int8_ops: float
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def cpu_name() -> str:
    return this_cpu().name


def paper_peak(cores: int | None = None, cpu: CpuInfo | None = None) -> PaperPeak:
    """cores x fp32 lanes x 2 (multiply + add) x FMA pipes x clock; INT8: x4 per lane with VNNI, else x2.
    ``cpu``: what the CPU reports (default this one's)."""
    cpu = cpu or this_cpu()
    flags = cpu.flags
    cores = cores or len(os.sched_getaffinity(0))
    lanes = 16 if "avx512f" in flags else 8 if "avx" in flags else 4
    fma = "fma" in flags or "avx512f" in flags
    vnni = cpu.vnni
    clock = cpu.clock_ghz or 0.0
    per_cycle = lanes * (2 if fma else 1) * FMA_PIPES_PER_CORE
    fp32 = cores * per_cycle * clock * 1e9
    # VNNI (vpdpbusd): 4 u8*s8 products summed into each 32-bit lane per instruction. Without it the
    # vpmaddubsw + vpmaddwd pair yields about 2 per lane per cycle.
    int8 = cores * lanes * (4 if vnni else 2) * 2 * FMA_PIPES_PER_CORE * clock * 1e9
    assumptions = [
        f"CPU {cpu.name}; {cores} cores usable by this process",
        f"clock {clock:.3f} GHz ({cpu.clock_source})",
        f"{lanes} fp32 lanes per vector ({'AVX-512' if lanes == 16 else 'AVX' if lanes == 8 else 'SSE'}), "
        f"FMA {'yes' if fma else 'no'}, {FMA_PIPES_PER_CORE} FMA pipes per core (assumed)",
        f"INT8 {'VNNI (4 products per 32-bit lane)' if vnni else 'no VNNI flag: 2 products per lane assumed'}",
    ]
    return PaperPeak(cores, clock, lanes, fma, vnni, fp32, int8, assumptions)


def _matmul_session(dtype: str, threads: int | None) -> Any:
    import onnx
    from onnx import TensorProto, helper


    ort = import_onnxruntime()
    if dtype == "float32":
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
    else:
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        types = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", types[0], ["m", "k"]),
                                                helper.make_tensor_value_info("b", types[1], ["k", "n"])],
                              [helper.make_tensor_value_info("c", types[2], ["m", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx.shape_inference.infer_shapes(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def measured_gemm_rate(dtype: str = "float32", size: int = 1024, runs: int = 10, threads: int | None = None) -> float:
    """Median FLOP/s (or int8 op/s) of a ``size``^3 GEMM on ONNX Runtime CPU (``dtype`` float32 or int8)."""
    session = _matmul_session(dtype, threads)
    rng = np.random.default_rng(0)
    if dtype == "float32":
        feed = {"a": rng.standard_normal((size, size), dtype=np.float32),
                "b": rng.standard_normal((size, size), dtype=np.float32)}
    else:
        feed = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}
    return 2.0 * size**3 / (median_ms(lambda: session.run(None, feed), runs) / 1e3)
