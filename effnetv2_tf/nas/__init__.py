"""Training-aware architecture search (EfficientNetV2 paper section 3.3)."""
