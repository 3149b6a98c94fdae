"""Serving: the Triton model repository's Python models, a local Triton server, and clients (CLI, Encoder)."""
