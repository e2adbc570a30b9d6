"""Developer tools: the recipes document (docs/recipes.md) and its reference data."""
