"""The export step: ONNX towers, fp16 variants, TensorRT plans on GPU nodes, parity gates; and the Triton repository."""
