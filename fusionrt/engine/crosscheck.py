"""The ``polygraphy run`` command that cross-checks a graph on ONNX Runtime and TensorRT with our profiles.

Users run it on their own GPU (``--trt``); CI runs the same command with ``onnxrt_only=True`` (no GPU here).
Integer inputs get their manifest value range, so the random feed is a valid one.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from fusionrt.bundle.manifest import Bundle
from fusionrt.runtime.backends.tensorrt.profiles import ShapeProfile, default_profile

TOLERANCES = {"fp32": "1e-3", "fp16": "5e-2", "int8": "2e-1"}


def _shapes(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    return [f"{name}:[{','.join(str(d) for d in shape)}]" for name, shape in shapes.items()]


def polygraphy_command(bundle: Bundle, graph: str, precision: str, profile: ShapeProfile | None = None,
                       onnxrt_only: bool = False) -> list[str]:
    """``polygraphy run <graph file> --onnxrt --trt --strongly-typed`` with the profile's min/opt/max shapes, a
    feed at the opt shapes, valid integer ranges and a tolerance for the precision."""
    spec = bundle.graph(graph)
    profile = profile or default_profile(spec)
    shapes = profile.input_shapes(spec)
    command = ["polygraphy", "run", str(Path(bundle.graph_path(graph, precision))), "--onnxrt"]
    if not onnxrt_only:
        command += ["--trt", "--strongly-typed",
                    "--trt-min-shapes", *_shapes({n: s[0] for n, s in shapes.items()}),
                    "--trt-opt-shapes", *_shapes({n: s[1] for n, s in shapes.items()}),
                    "--trt-max-shapes", *_shapes({n: s[2] for n, s in shapes.items()})]
    command += ["--input-shapes", *_shapes({n: s[1] for n, s in shapes.items()})]
    ranges = [f"{t.name}:[{t.value_range[0]},{t.value_range[1]}]" for t in spec.inputs if t.value_range]
    if ranges:
        command += ["--val-range", *ranges]
    tolerance = TOLERANCES.get(precision, "1e-3")
    return [*command, "--atol", tolerance, "--rtol", tolerance, "--check-error-stat", "max"]


def command_text(command: list[str]) -> str:
    return shlex.join(command)
