"""Small helpers shared across `distill`: error hints, safe model loading, the model card, import-noise filters."""
