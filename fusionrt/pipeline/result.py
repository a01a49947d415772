"""What a pipeline run returns: the stages it ran or reused and the gates it checked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


def stage_key(**parts: Any) -> str:
    """A stage's key: the sha256 of what it depends on (a rerun reuses the stage while its key is unchanged)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Gate:
    """One pass/fail check: ``status`` is ``passed``, ``failed`` or ``skipped`` (never reached)."""

    name: str
    stage: str
    status: str
    message: str = ""
    details: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StageRecord:
    """A stage's outcome: ``ran``, ``reused`` (key unchanged, artifacts verified), ``skipped`` or ``failed``."""

    name: str
    status: str
    seconds: float
    key: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PipelineResult:
    bundle: str
    stages: list[StageRecord] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)

    @property
    def failed_gate(self) -> Gate | None:
        return next((g for g in self.gates if g.status == "failed"), None)

    @property
    def passed(self) -> bool:
        return self.failed_gate is None

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "passed": self.passed, "stages": [s.to_dict() for s in self.stages],
                "gates": [g.to_dict() for g in self.gates]}
