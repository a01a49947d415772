"""Caption generation on exported caption bundles, torch-free: steppers that keep the KV cache
backend-native, greedy / beam / streaming decoding, and the :class:`Captioner` app."""
