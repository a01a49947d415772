"""FP16 and INT8 graphs of a bundle: calibration on real scenes, Q/DQ for TensorRT and for the CPU, budgets.

``calibrate(bundle)`` adds ``calibration.npz``; ``quantize_fp16(bundle)`` adds ``fusion.fp16.onnx``;
``quantize_int8(bundle, method=...)`` adds ``fusion.int8.onnx`` (TensorRT), ``fusion.int8-cpu.onnx``
(ONNX Runtime CPU) and the activation ranges (``fusion.int8.ranges.json``). Each precision is registered in the manifest
only within its accuracy budget against the fp32 PyTorch model on held-out scenes.
"""

from fusionrt.calibration.api import calibrate, load_calibration, quantize_fp16, quantize_int8
from fusionrt.calibration.budget import BUDGETS, Budget, HeldoutEvaluator, Measurement
from fusionrt.calibration.errors import BudgetExceededError, CalibrationError, QuantizationError
from fusionrt.calibration.fp16 import DEFAULT_KEEP_FP32, convert_fp16
from fusionrt.calibration.qdq import CPU, RECIPES, TENSORRT, Recipe, write_qdq
from fusionrt.calibration.ranges import DEFAULT_METHOD, METHODS, Ranges, collect_ranges, trt_calibration_cache
from fusionrt.calibration.samples import CalibrationSet, draw_scenes, load_directory

__all__ = [
    "BUDGETS", "CPU", "DEFAULT_KEEP_FP32", "DEFAULT_METHOD", "METHODS", "RECIPES", "TENSORRT", "Budget",
    "BudgetExceededError", "CalibrationError", "CalibrationSet", "HeldoutEvaluator", "Measurement",
    "QuantizationError", "Ranges", "Recipe", "calibrate", "collect_ranges", "convert_fp16", "draw_scenes",
    "load_calibration", "load_directory", "quantize_fp16", "quantize_int8", "trt_calibration_cache", "write_qdq",
]
