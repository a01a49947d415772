"""Training settings (torch-free, so the CLI can list them without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """What ``fusionrt train`` does; the defaults produce the shipped ``small`` checkpoint."""

    preset: str = "small"
    train_scenes: int = 20000
    heldout_scenes: int = 2000
    questions_per_kind: int = 1
    # Relational questions are the slowest to learn; more of them per scene shortens the plateau.
    left_of_per_scene: int = 3
    steps: int = 1400
    scenes_per_step: int = 20
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    attribute_loss_weight: float = 0.5
    grounding_loss_weight: float = 0.5
    seed: int = 0
    threads: int = 2
    model_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchTrainConfig:
    """What ``fusionrt train --task match`` does; the defaults produce the shipped ``match`` checkpoint.

    The region encoder is the shipped scene-world one, frozen: region features are computed once per
    training scene, and an index built with either checkpoint stores the same features."""

    train_scenes: int = 8000
    heldout_scenes: int = 5000
    heldout_queries: int = 500
    # Exhaustive ITM over the whole held-out database costs queries x scenes fusion rows; this many queries.
    exhaustive_queries: int = 40
    rerank: int = 128
    steps: int = 1500
    # Wall-clock bound on the steps (0: none): the schedule then follows the larger of the step and time
    # fractions, so a loaded machine trains fewer steps but still anneals to the end.
    time_budget_s: float = 480.0
    scenes_per_step: int = 48
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    itm_weight: float = 1.0
    seed: int = 0
    threads: int = 1


@dataclass
class CaptionTrainConfig:
    """What ``fusionrt train --task caption`` does; the defaults produce the shipped ``caption-small`` checkpoint.

    The region encoder is the shipped VQA model's, frozen (its features already carry colour, shape, size and
    position); only the decoder trains, on region features computed once.
    """

    train_scenes: int = 3000
    heldout_scenes: int = 2000
    steps: int = 300
    batch_scenes: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2
    model_overrides: dict[str, Any] = field(default_factory=dict)
