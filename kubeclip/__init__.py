"""kubeclip: CLIP (Radford et al. 2021) as Kubeflow/Kubernetes MLOps components.

    import kubeclip
    model, _, preprocess = kubeclip.create_model_and_transforms("runs/train")  # a name, weights file or run
    probs = kubeclip.zero_shot(model, ["cat.jpg", "dog.png"], ["cat", "dog"])   # [images, labels]

The repository's `model/`, `components/` and `pipelines/` folders are this package's `kubeclip.model`,
`kubeclip.components` and `kubeclip.pipelines`. Importing it loads neither torch nor kfp nor kserve: each
name below is imported on first use (PEP 562), so `kubeclip --help` and light clients stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "create_model_and_transforms": "kubeclip.model.factory",
    "get_tokenizer": "kubeclip.model.factory",
    "zero_shot": "kubeclip.model.zeroshot",
}
_SUBPACKAGES = ("model", "components", "pipelines")

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})
