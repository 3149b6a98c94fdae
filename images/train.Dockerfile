# The GPU training image: a CUDA PyTorch base plus kubeclip. Its torch is constraints.txt's, so the
# install below keeps the base's CUDA build. The PyTorchJob runs `torchrun -m kubeclip.components.train`; the
# default entry point trains in one process. Built by `make images` (base from components/images.py).
ARG TRAIN_BASE
FROM ${TRAIN_BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/kubeclip
COPY pyproject.toml constraints.txt README.md ./
COPY kubeclip kubeclip
COPY model model
COPY components components
COPY pipelines pipelines
# The launcher's PyTorchJob template lives in manifests/; installed in place, as in the runtime image.
COPY manifests manifests
RUN pip install -c constraints.txt -e . && python -m compileall -q kubeclip model components pipelines

RUN useradd --uid 1000 --create-home kubeclip
USER 1000
ENTRYPOINT ["python", "-m", "kubeclip.components.train"]
