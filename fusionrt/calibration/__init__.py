"""FP16 and INT8 graphs of a bundle: calibration on real scenes, Q/DQ for TensorRT and for the CPU, budgets.

``calibrate(bundle)`` adds ``calibration.npz``; ``quantize_fp16(bundle)`` adds ``fusion.fp16.onnx`` (nodes kept in
FP32 measured on the calibration set: ``fp32_keep_set``; ``convert_mixed_precision(..., dtype="bfloat16")`` reuses
that set for a BF16 graph);
``quantize_int8(bundle, method=...)`` adds ``fusion.int8.onnx`` (TensorRT), ``fusion.int8-cpu.onnx``
(ONNX Runtime CPU) and the activation ranges (``fusion.int8.ranges.json``). Each precision is registered in the manifest
only within its accuracy budget against the fp32 PyTorch model on held-out scenes.
"""

from fusionrt.calibration.api import calibrate, fp32_keep_set, load_calibration, quantize_fp16, quantize_int8
from fusionrt.calibration.autocast import Thresholds
from fusionrt.calibration.errors import BudgetExceededError, CalibrationError, QuantizationError
from fusionrt.calibration.fp16 import convert_mixed_precision
from fusionrt.calibration.qdq import CPU, RECIPES, TENSORRT, Recipe, write_qdq
from fusionrt.calibration.ranges import DEFAULT_METHOD, METHODS, Ranges, collect_ranges, trt_calibration_cache
from fusionrt.calibration.samples import CalibrationSet, draw_scenes, load_directory
from fusionrt.parity.budgets import BUDGETS, Budget, Measurement
from fusionrt.parity.heldout import HeldoutEvaluator

__all__ = [
    "BUDGETS", "CPU", "DEFAULT_METHOD", "METHODS", "RECIPES", "TENSORRT", "Budget", "BudgetExceededError",
    "CalibrationError", "CalibrationSet", "HeldoutEvaluator", "Measurement", "QuantizationError", "Ranges", "Recipe",
    "Thresholds", "calibrate", "collect_ranges", "convert_mixed_precision", "draw_scenes", "fp32_keep_set",
    "load_calibration", "load_directory", "quantize_fp16", "quantize_int8", "trt_calibration_cache", "write_qdq",
]
