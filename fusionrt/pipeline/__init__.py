"""The main job in one call: ``run_pipeline(PipelineConfig(out=...))`` from checkpoint to a verified,
quantized, parity-checked and benchmarked bundle with a report; stages reused by key on reruns."""

from fusionrt.pipeline.junit import write_junit
from fusionrt.pipeline.lock import bundle_lock, lock_path
from fusionrt.pipeline.result import Gate, PipelineResult, StageRecord
from fusionrt.pipeline.run import STAGES, GateFailed, PipelineConfig, PipelineWriteError, run_pipeline

__all__ = [
    "STAGES", "Gate", "GateFailed", "PipelineConfig", "PipelineResult", "PipelineWriteError", "StageRecord",
    "bundle_lock", "lock_path", "run_pipeline", "write_junit",
]
