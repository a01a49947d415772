"""Export fusion models to verified, dynamic-shape ONNX bundles (needs torch, onnx, onnxruntime).

``export_onnx(model, out_dir, vocab_size=..., visual_dim=..., max_text_len=..., max_visual_len=...)``
exports any module with the fusion forward contract; ``export_checkpoint(checkpoint_dir, out_dir)``
exports our checkpoint with its region encoder and vocabularies. Both publish the bundle only after
it passed the ONNX checker, the symbolic-dim check and ONNX Runtime vs PyTorch on a shape grid.
"""

from fusionrt.export.api import FUSION_CONTRACT, export_checkpoint, export_onnx
from fusionrt.export.contract import fusion_spec, region_encoder_spec
from fusionrt.export.errors import ExportError, VerificationError
from fusionrt.export.exporters import DEFAULT_EXPORTER, EXPORTERS

__all__ = [
    "DEFAULT_EXPORTER", "EXPORTERS", "FUSION_CONTRACT", "ExportError", "VerificationError", "export_checkpoint",
    "export_onnx", "fusion_spec", "region_encoder_spec",
]
