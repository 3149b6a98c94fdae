"""The deploy step: the Triton repository rolled out as a KServe InferenceService, canary-checked in Prometheus."""
