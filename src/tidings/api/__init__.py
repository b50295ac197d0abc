"""The HTTP API (FastAPI): routers per noun, problem documents for every error."""
