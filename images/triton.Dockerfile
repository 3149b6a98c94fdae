# The Triton serving image: NVIDIA's tritonserver release (ONNX Runtime, TensorRT and Python backends)
# plus the libraries the repository's Python-backend models import (components/serve/triton_models and
# the tokenizer and preprocessing copied from model/; a test derives the list from their source).
# The models' code and tokenizer files travel inside the repository (`kubeclip triton-repo`), so
# neither kubeclip nor torch is installed here. Built by `make images`; the release is
# components/images.py's TRITON_RELEASE, the one TensorRT engines are built with.
ARG TRITON_BASE
FROM ${TRITON_BASE}

# Ubuntu 24.04 marks the system Python as externally managed; this image is its only user.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
COPY constraints.txt /tmp/constraints.txt
RUN python3 -m pip install -c /tmp/constraints.txt numpy pillow onnxruntime ftfy regex tokenizers && rm /tmp/constraints.txt

# triton-server (uid 1000), the non-root user of NVIDIA's image; the ServingRuntime runs as it
USER 1000
