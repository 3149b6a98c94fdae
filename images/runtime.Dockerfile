# The project image: kubeclip with the tested dependency set. KFP's lightweight components run their
# bodies in it, and so do the KServe transformer and the `kubeclip` command. Built by `make images`,
# which passes the base named in components/images.py.
ARG RUNTIME_BASE
FROM ${RUNTIME_BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/kubeclip
COPY pyproject.toml constraints.txt README.md ./
COPY kubeclip kubeclip
COPY model model
COPY components components
COPY pipelines pipelines
# The deploy step and the PyTorchJob launcher read their templates from manifests/ beside the source,
# so the package is installed in place (editable) rather than copied into site-packages.
COPY manifests manifests
RUN pip install -c constraints.txt -e . && python -m compileall -q kubeclip model components pipelines

# uid 1000, as the manifests' securityContext asks
RUN useradd --uid 1000 --create-home kubeclip
USER 1000
ENTRYPOINT ["kubeclip"]
