"""KFP component of the deploy step: the package step's Triton repository rolled out as the InferenceService."""

from kfp import dsl

from kubeclip.components.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def deploy(repository: dsl.Input[dsl.Model], namespace: str, name: str = "clip", canary_percent: int = 0,
           prometheus_url: str = "", dry_run: bool = False) -> str:
    """Create or patch the InferenceService to serve `repository`; returns what happened (deployed, promoted,
    dry-run). A failed canary rolls back and fails the task with the reason."""
    from kubeclip.components.deploy.step import DeployOptions, deploy
    from kubeclip.components.storage import storage_uri

    # KServe's storage initializer fetches the repository itself: a URI it reads (s3://, not KFP's minio://)
    result = deploy(DeployOptions(name=name, namespace=namespace, storage_uri=storage_uri(repository.uri),
                                  model_id=repository.metadata.get("kubeclip_model_id"),
                                  lineage=f"{repository.path}/lineage.json",
                                  canary_percent=canary_percent or None, prometheus_url=prometheus_url or None,
                                  dry_run=dry_run))
    return result["action"]
