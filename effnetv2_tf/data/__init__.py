"""Input pipeline: sources, preprocessing and augmentation (paper section 4)."""
