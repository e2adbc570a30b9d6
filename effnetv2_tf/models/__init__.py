"""Model definitions: the registry, block strings, builder and layers."""
