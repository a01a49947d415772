"""Latency test runs of a bundle: ``run_bench(bundle, BenchConfig(...))``.

Timing in blocks (never call-by-call alternation), PyTorch eager fp32 as the baseline in the same run,
FLOPs and bytes counted from the ONNX graph at each shape, and the CPU's peak on paper and measured
with a large GEMM in the same run.
"""

from fusionrt.bench.cost import GraphCost, graph_cost
from fusionrt.bench.peak import PaperPeak, measured_gemm_rate, paper_peak
from fusionrt.bench.run import (
    BASELINE,
    DEFAULT_SHAPES,
    SWEEP_SHAPES,
    BenchConfig,
    app_latency,
    bench_feed,
    format_table,
    parse_shape,
    run_bench,
)
from fusionrt.bench.timing import concurrent_throughput, latency_stats, time_blocks

__all__ = [
    "BASELINE", "DEFAULT_SHAPES", "SWEEP_SHAPES", "BenchConfig", "GraphCost", "PaperPeak", "app_latency",
    "bench_feed", "concurrent_throughput", "format_table", "graph_cost", "latency_stats", "measured_gemm_rate",
    "paper_peak", "parse_shape", "run_bench", "time_blocks",
]
