"""Training: config, progressive stages, optimizers, the loops, run I/O."""
