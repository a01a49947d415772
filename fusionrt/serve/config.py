"""``config.pbtxt`` text for Triton models, built from the bundle's graph contract.

Written as protobuf text by hand (no protobuf dependency on the serving path); the tests parse every
generated file with Triton's own ``ModelConfig`` message (``tritonclient.grpc.model_config_pb2``),
which refuses unknown fields and wrong types.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from fusionrt.bundle.spec import GraphSpec, TensorSpec

# numpy dtype name -> Triton DataType
TRITON_DTYPES = {"bool": "TYPE_BOOL", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16",
                 "float32": "TYPE_FP32", "bytes": "TYPE_STRING"}


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of a Triton model. ``dims`` exclude the batch dim; -1 is dynamic."""

    name: str
    dtype: str  # a key of TRITON_DTYPES
    dims: tuple[int, ...]
    ragged: bool = False  # inputs only: let the dynamic batcher group requests of different shapes
    optional: bool = False

    @classmethod
    def from_spec(cls, tensor: TensorSpec, ragged: bool = False) -> TensorConfig:
        """The manifest's tensor without its leading batch dim, symbols as -1."""
        dims = tuple(-1 if isinstance(d, str) else int(d) for d in tensor.shape[1:])
        return cls(tensor.name, tensor.dtype, dims, ragged=ragged and -1 in dims)

    def text(self, kind: str) -> str:
        lines = [f'    name: "{self.name}"', f"    data_type: {TRITON_DTYPES[self.dtype]}",
                 f"    dims: [ {', '.join(str(d) for d in self.dims)} ]"]
        if self.ragged:
            lines.append("    allow_ragged_batch: true")
        if self.optional:
            lines.append("    optional: true")
        return "  {\n" + "\n".join(lines) + "\n  }"


@dataclass(frozen=True)
class InstanceGroup:
    """``count`` instances on ``kind`` (KIND_CPU / KIND_GPU; empty: Triton's default, GPU when there is one);
    ``profiles``: the TensorRT optimization profiles these instances use."""

    count: int = 1
    kind: str = "KIND_CPU"
    profiles: tuple[str, ...] = ()

    def text(self) -> str:
        parts = [f"count: {self.count}"] + ([f"kind: {self.kind}"] if self.kind else [])
        if self.profiles:
            parts.append("profile: [ " + ", ".join(f'"{p}"' for p in self.profiles) + " ]")
        return "  { " + " ".join(parts) + " }"


@dataclass(frozen=True)
class ModelConfig:
    """What fusionrt writes into a ``config.pbtxt``: one of ``backend`` or ``platform`` is set."""

    name: str
    inputs: Sequence[TensorConfig]
    outputs: Sequence[TensorConfig]
    max_batch_size: int
    backend: str = ""
    platform: str = ""
    instance_groups: Sequence[InstanceGroup] = (InstanceGroup(),)
    preferred_batch_sizes: Sequence[int] = ()
    queue_delay_us: int | None = None  # None: no dynamic batching
    parameters: dict[str, str] = field(default_factory=dict)
    default_model_filename: str = ""

    def text(self) -> str:
        lines = [f'name: "{self.name}"']
        lines += [f'backend: "{self.backend}"'] if self.backend else [f'platform: "{self.platform}"']
        lines.append(f"max_batch_size: {self.max_batch_size}")
        if self.default_model_filename:
            lines.append(f'default_model_filename: "{self.default_model_filename}"')
        lines.append("input [\n" + ",\n".join(t.text("input") for t in self.inputs) + "\n]")
        lines.append("output [\n" + ",\n".join(t.text("output") for t in self.outputs) + "\n]")
        lines.append("instance_group [\n" + ",\n".join(g.text() for g in self.instance_groups) + "\n]")
        if self.queue_delay_us is not None:
            body = []
            if self.preferred_batch_sizes:
                body.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in self.preferred_batch_sizes)} ]")
            body.append(f"  max_queue_delay_microseconds: {self.queue_delay_us}")
            lines.append("dynamic_batching {\n" + "\n".join(body) + "\n}")
        for key, value in self.parameters.items():
            # json.dumps quotes and escapes like protobuf text for the plain strings used here.
            lines.append(f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}")
        return "\n".join(lines) + "\n"


def graph_tensors(graph: GraphSpec, ragged: bool = False) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """Inputs and outputs of a bundle graph as Triton tensors (the first dim of each is the batch)."""
    return ([TensorConfig.from_spec(t, ragged) for t in graph.inputs],
            [TensorConfig.from_spec(t) for t in graph.outputs])


def batch_dim_max(graph: GraphSpec) -> int:
    """The largest batch the bundle's graph accepts (its inputs' shared leading dim)."""
    first = graph.inputs[0].shape[0]
    return graph.dims[first].max if isinstance(first, str) else int(first)


def preferred_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, from 4: the batcher waits for one of these before the delay runs out."""
    sizes, size = [], 4
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    return tuple(sizes)
