"""Training: progressive stages, optimizers, the step and the two loops."""
