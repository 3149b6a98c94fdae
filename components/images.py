"""Container images: the one place that names them and the bases they are built on.

`make images` builds images/*.Dockerfile with these names and passes the bases as build arguments;
`python -m kubeclip.components.images NAME` prints one of them (the Makefile reads them so).
"""

import sys

# The project image (this package and its dependencies); lightweight components run their body in it.
RUNTIME_IMAGE = "ghcr.io/kubeclip/kubeclip:0.1.0"
# The GPU training image (CUDA PyTorch base plus this package).
TRAIN_IMAGE = "ghcr.io/kubeclip/kubeclip-train:0.1.0"
# The Triton serving image (a Triton release plus what the Python-backend models need).
TRITON_IMAGE = "ghcr.io/kubeclip/kubeclip-triton:0.1.0"
# The KServe transformer image: this package without its dependencies, plus pyproject's `transformer` extra only.
TRANSFORMER_IMAGE = "ghcr.io/kubeclip/kubeclip-transformer:0.1.0"

# The Python of constraints.txt (the tested set is resolved for it).
RUNTIME_BASE = "python:3.11-slim"
# The same Python: the transformer's packages are installed at constraints.txt's versions too.
TRANSFORMER_BASE = RUNTIME_BASE
# Its torch is constraints.txt's (a test checks), so installing the package keeps the base's CUDA build.
TRAIN_BASE = "pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime"
# One NGC release for serving and for building engines: a TensorRT plan loads only in the TensorRT version
# that built it, and NGC's tritonserver and tensorrt images of one release carry the same TensorRT
# (24.12: Triton 2.53, TensorRT 10.7, Ubuntu 24.04 with Python 3.12).
TRITON_RELEASE = "24.12"
TRITON_BASE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
TENSORRT_IMAGE = f"nvcr.io/nvidia/tensorrt:{TRITON_RELEASE}-py3"  # trtexec, for components/export/tensorrt.py


def main(argv: list[str]) -> int:
    names = {k: v for k, v in globals().items() if k.isupper() and isinstance(v, str)}
    if len(argv) != 1 or argv[0] not in names:
        print(f"usage: python -m kubeclip.components.images NAME, NAME one of {', '.join(names)}", file=sys.stderr)
        return 2
    print(names[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
