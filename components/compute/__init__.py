"""DeepSpeed: config building, single-process or launched initialisation, checkpoints."""
