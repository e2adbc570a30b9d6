"""Experiment configs: the base recipe and the named dataset configs."""
