"""The benchmark step: zero-shot classification, retrieval, linear probe and robustness, and the quality gate."""
