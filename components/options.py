"""Step options as typed dataclasses: one definition gives the CLI flags, the params.yaml keys and the defaults.

Precedence, lowest first: the dataclass default, the step's section of `--params FILE`, explicit flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", positional: bool = False) -> Any:
    """A dataclass field carrying its `--help` text (a positional argument when `positional`).
    List defaults are copied per instance."""
    metadata = {"help": help, "positional": positional}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, options_type: type, params_section: str | None = None) -> None:
    """Add one kebab-case flag per field of `options_type` (plus `--params` when a section is given)."""
    hints = typing.get_type_hints(options_type)
    for f in dataclasses.fields(options_type):
        if not f.init:
            continue
        kind, is_list = _base_type(hints[f.name])
        default = _default(f)
        help_text = f.metadata.get("help", "")
        if default is not dataclasses.MISSING and default not in (None, [], False):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f.name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.name.upper()
            if is_list:  # --flag A B, or repeated: --flag A --flag B
                kwargs.update(nargs="+", action="extend")
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="+", metavar=f.name.upper(), help=help_text)
            continue
        parser.add_argument(flag_name(f.name), **kwargs)
    if params_section:
        parser.add_argument("--params", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                            help=f"YAML file whose '{params_section}:' section sets these options; flags win")
    parser.set_defaults(_options_type=options_type, _params_section=params_section)


def options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """The options dataclass from parsed flags, filled in from `--params` and the defaults."""
    options_type, section = args._options_type, args._params_section
    names = {f.name for f in dataclasses.fields(options_type) if f.init}
    values: dict[str, Any] = {}
    if getattr(args, "params", None):
        values.update(load_params(args.params, section, names))
    values.update({k: v for k, v in vars(args).items() if k in names})
    missing = [flag_name(f.name) for f in dataclasses.fields(options_type)
               if f.init and f.name not in values and _default(f) is dataclasses.MISSING]
    if missing:
        message = f"the following arguments are required: {', '.join(missing)}"
        if parser:
            parser.error(message)
        raise SystemExit(message)
    return options_type(**values)


def load_params(path: Path, section: str, names: set[str]) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    values = data.get(section) or {}
    unknown = set(values) - names
    if unknown:
        raise SystemExit(f"{path}: unknown keys in '{section}:' {sorted(unknown)}; "
                         f"valid keys are {sorted(names)}")
    return values


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _base_type(hint: Any) -> tuple[type, bool]:
    """(element type, is a list) for hints such as `int`, `str | None`, `list[str]`, `Path`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _base_type(args[0])
    if typing.get_origin(hint) in (list, tuple):
        return args[0], True
    return hint, False


def to_argv(options) -> list[str]:
    """The flags that recreate `options` (those that differ from the defaults), e.g. for a relaunch under torchrun."""
    argv = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if not f.init or value == _default(f) or value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag_name(f.name) if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag_name(f.name), *map(str, value)]
        else:
            argv.append(f"{flag_name(f.name)}={value}")
    return argv
