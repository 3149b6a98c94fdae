"""Every KFP component compiles to IR YAML, with the project image and no run-time pip install of kfp; the one
container component (trtexec) runs in the TensorRT release that matches the serving Triton."""

import importlib
import pkgutil

import pytest
import yaml
from kfp import compiler
from kfp.dsl.base_component import BaseComponent

from kubeclip import components
from kubeclip.components.images import RUNTIME_IMAGE, TENSORRT_IMAGE


def all_components() -> list[BaseComponent]:
    found = []
    for package in pkgutil.iter_modules(components.__path__):
        try:
            module = importlib.import_module(f"components.{package.name}.component")
        except ModuleNotFoundError:
            continue
        found += [v for v in vars(module).values() if isinstance(v, BaseComponent)]
    return found


@pytest.mark.parametrize("component", all_components(), ids=lambda c: c.name)
def test_component_compiles(component, tmp_path):
    compiler.Compiler().compile(component, str(tmp_path / "component.yaml"))
    spec = yaml.safe_load((tmp_path / "component.yaml").read_text())
    (executor,) = spec["deploymentSpec"]["executors"].values()
    expected = TENSORRT_IMAGE if component.name == "export-tensorrt" else RUNTIME_IMAGE
    assert executor["container"]["image"] == expected
    assert "pip install" not in " ".join(executor["container"]["command"])
