"""fusionrt: train, export, quantize and serve a vision-text cross-attention fusion model."""

__version__ = "0.1.0"
