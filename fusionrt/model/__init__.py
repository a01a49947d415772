"""The fusion model (torch). Import cost is torch's; the serving path does not import this."""

from fusionrt.model.checkpoint import (
    SHIPPED_CHECKPOINT,
    Checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from fusionrt.model.config import PRESETS, FusionConfig, preset
from fusionrt.model.fusion import FusionModel, count_parameters
from fusionrt.model.region_encoder import RegionEncoder, RegionEncoderConfig

__all__ = [
    "PRESETS", "SHIPPED_CHECKPOINT", "Checkpoint", "FusionConfig", "FusionModel", "RegionEncoder",
    "RegionEncoderConfig", "count_parameters", "load_checkpoint", "load_model", "preset", "save_checkpoint",
]
