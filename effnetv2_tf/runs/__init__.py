"""Run I/O: a run directory, its config.json and summary.json, and its
checkpoints; export, infer.py and plot read runs through it without the
training stack."""
