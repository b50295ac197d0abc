"""The delivery engine: what to claim (dispatcher), what an outcome means (policy)."""
