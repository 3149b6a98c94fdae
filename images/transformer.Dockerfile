# The KServe transformer image: kubeclip installed without its dependencies, plus only what
# `python -m kubeclip.components.serve.transformer` imports (pyproject.toml's `transformer` extra; a test checks
# that the list below is that extra). No torch, no CUDA, no Triton client: a fraction of the runtime image.
# Built by `make images` (base from components/images.py).
ARG TRANSFORMER_BASE
FROM ${TRANSFORMER_BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/kubeclip
COPY pyproject.toml constraints.txt README.md ./
# Every folder the package maps (pyproject's package-dir); only the serving modules are ever imported.
COPY kubeclip kubeclip
COPY model model
COPY components components
COPY pipelines pipelines
RUN pip install -c constraints.txt kserve grpcio numpy orjson pillow prometheus-client \
    && pip install -c constraints.txt --no-deps .

# uid 1000, as the manifests' securityContext asks
RUN useradd --uid 1000 --create-home kubeclip
USER 1000
# Away from the sources: their top-level kubeclip/ would shadow the installed package, which maps the others in.
WORKDIR /home/kubeclip
ENTRYPOINT ["python", "-m", "kubeclip.components.serve.transformer"]
