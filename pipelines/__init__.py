"""The Kubeflow pipeline(s) wiring kubeclip's components."""

# The identity a cluster run's pods take: manifests/base/rbac defines it with the rights a run needs (a test checks).
SERVICE_ACCOUNT = "kubeclip-pipeline"
PIPELINE_ROOT_ENV = "KUBECLIP_PIPELINE_ROOT"  # where cluster runs keep their artifacts, unless --pipeline-root says
