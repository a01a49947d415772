"""Compare two backends (or precisions) of a bundle on shape grids and real held-out scenes.

``run_parity(bundle, reference="torch", candidate="onnxruntime")`` returns a :class:`ParityReport`
(worst max abs / max rel / mean abs error and cosine per output, argmax agreement and task accuracy
on scenes) under :func:`gates_for` the candidate's precision; export verification uses the same grid
and metrics.
"""

from fusionrt.io import json_safe  # kept for callers of the old path
from fusionrt.parity.compare import GridResult, MetricAccumulator, PointResult, Tolerance, compare_grid
from fusionrt.parity.gates import Failure, Gates, Limit, gates_for
from fusionrt.parity.grid import GridPoint, default_sizes, fusion_feed, grid_points, random_feed
from fusionrt.parity.metrics import array_metrics
from fusionrt.parity.report import ParityReport, run_parity
from fusionrt.parity.scenes import SceneResult, compare_scenes, heldout_questions, pad_regions

__all__ = [
    "Failure", "Gates", "GridPoint", "GridResult", "Limit", "MetricAccumulator", "ParityReport", "PointResult",
    "SceneResult", "Tolerance", "array_metrics", "compare_grid", "compare_scenes", "default_sizes", "fusion_feed",
    "gates_for", "grid_points",
    "heldout_questions", "json_safe", "pad_regions", "random_feed", "run_parity",
]
