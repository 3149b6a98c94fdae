"""TorchScript archives (OpenAI's CLIP release format) read as data: their tensors are extracted, their code never runs.

`torch.jit.load` runs an archive's TorchScript (a class's `__setstate__`, on load), so it could run code hidden in a
weights file. The archive is a zip: `<name>/data.pkl` pickles the module tree, whose tensors point at storages in
`<name>/data/<key>`, and `<name>/code/` holds each class's TorchScript source, whose `__parameters__` and
`__buffers__` lists say which attributes `state_dict()` holds. That source is only read as text; the pickle is read
with an allow-list (tensor rebuilding, storage types, TorchScript's container tags, and `__torch__.*` classes as
inert records of their attributes), and anything else is refused before it is created.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

_DTYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Double", torch.float64), ("Float", torch.float32), ("Half", torch.float16), ("BFloat16", torch.bfloat16),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool), ("ComplexFloat", torch.complex64),
    ("ComplexDouble", torch.complex128))}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2` as data: a view of the storage; grad flags and hooks do not matter."""
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _untag(value, type_tag=None):
    """`torch.jit._pickle`'s typed lists and `restore_type_tag`: the value itself, as in PyTorch."""
    return value


_CALLABLES = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
              ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
              ("collections", "OrderedDict"): OrderedDict,  # a tensor's (empty) backward hooks
              **{("torch.jit._pickle", name): _untag for name in (
                  "restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")}}


class _Class(NamedTuple):
    qualname: str
    is_module: bool
    state: tuple[str, ...]  # its parameters and buffers: the attributes `state_dict()` holds
    has_setstate: bool


class _ScriptObject:
    """An inert stand-in for an object of a scripted class: it records its attributes and runs nothing."""
    cls: _Class
    attributes: dict

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ValueError(f"{self.cls.qualname} is pickled as a {type(state).__name__}, not as its attributes")
        self.attributes = state


def is_archive(path: str | Path) -> bool:
    """Whether a zip file is a TorchScript archive rather than a `torch.save` one (both hold `data.pkl`)."""
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in z.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The archive's parameters and buffers under the names `torch.jit.load(path).state_dict()` gives them."""
    try:
        with zipfile.ZipFile(path) as z:
            prefix = next((n[:-len("data.pkl")] for n in z.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)), None)
            if prefix is None:
                raise ValueError("it has no <archive>/data.pkl (an older TorchScript format)")
            if prefix + "byteorder" in z.namelist() and z.read(prefix + "byteorder") != b"little":
                raise ValueError("its tensors are stored big-endian")
            root = _Unpickler(z, prefix).load()
        if not isinstance(root, _ScriptObject) or not root.cls.is_module:
            raise ValueError(f"it holds a {type(root).__name__}, not a scripted module")
        return _state_dict(root)
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"refusing to load the TorchScript archive {path}: {e}. kubeclip extracts such an "
                         "archive's tensors and never runs its code") from e


def _state_dict(module: _ScriptObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """`nn.Module.state_dict` over the inert tree: own parameters and buffers, then submodules'."""
    out = {prefix + name: module.attributes[name] for name in module.cls.state
           if isinstance(module.attributes.get(name), torch.Tensor)}
    for name, value in module.attributes.items():
        if isinstance(value, _ScriptObject) and value.cls.is_module:
            out.update(_state_dict(value, f"{prefix}{name}."))
    return out


def _classes(z: zipfile.ZipFile, prefix: str) -> dict[str, _Class]:
    """Each scripted class by qualified name, from its source in `code/`, parsed as text (literals only)."""
    classes = {}
    for name in z.namelist():
        if not (name.startswith(prefix + "code/") and name.endswith(".py")):
            continue
        module = name[len(prefix + "code/"):-len(".py")].replace("/", ".")
        for block in re.split(r"^class ", z.read(name).decode(), flags=re.M)[1:]:
            header = re.match(r"(\w+)(?:\((\w+)\))?:", block)
            lists = re.findall(r"^  __(?:parameters|buffers)__ = (\[.*\])$", block, flags=re.M)
            qualname = f"{module}.{header[1]}"
            classes[qualname] = _Class(qualname, header[2] == "Module",
                                       tuple(n for names in lists for n in ast.literal_eval(names)),
                                       re.search(r"^  def __setstate__\(", block, flags=re.M) is not None)
    return classes


class _Unpickler(pickle.Unpickler):
    """`data.pkl` with only what rebuilding tensors needs; storages come from `data/<key>` as raw bytes."""

    def __init__(self, z: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(z.read(prefix + "data.pkl")))
        self.zip, self.prefix, self.classes = z, prefix, _classes(z, prefix)

    def find_class(self, module: str, name: str):
        if (module, name) in _CALLABLES:
            return _CALLABLES[module, name]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module != "__torch__" and not module.startswith("__torch__."):
            raise ValueError(f"it would need {module}.{name}, which is neither a tensor part nor a scripted class")
        cls = self.classes.get(f"{module}.{name}")
        if cls is None:
            raise ValueError(f"its class {module}.{name} has no source under code/")
        if cls.has_setstate:
            raise ValueError(f"its class {cls.qualname} restores its state by running TorchScript (__setstate__)")
        return type(name, (_ScriptObject,), {"cls": cls})

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise ValueError(f"it refers to a {kind!r} of {dtype!r}, not a storage")
        data = bytearray(self.zip.read(f"{self.prefix}data/{key}"))
        if len(data) != numel * dtype.itemsize:
            raise ValueError(f"storage {key} holds {len(data)} bytes, not {numel} {dtype}")
        return torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
