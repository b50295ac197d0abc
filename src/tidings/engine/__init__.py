"""The delivery engine: claims due deliveries, runs attempts, acts on health."""
