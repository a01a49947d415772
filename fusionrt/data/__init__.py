"""Scene world, detector and tokenizer. Torch-free: the serving path imports it."""
