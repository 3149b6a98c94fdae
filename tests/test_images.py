"""The container images, checked without a Docker engine: `make images` builds every Dockerfile with the
names and bases of components/images.py, and every path, package and entry point a Dockerfile names
exists (in the build context, in constraints.txt, in the package)."""

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubeclip.components import images
from kubeclip.components.export.triton_repo import _PYTHON_FILES
from tests.conftest import ROOT

DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROVIDED_BY_TRITON = {"triton_python_backend_utils"}  # the Python backend's own module, in every Triton image


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


CONSTRAINTS = {normalize(name): version for name, _, version in
               (line.split("#")[0].strip().partition("==")
                for line in (ROOT / "constraints.txt").read_text().splitlines()) if name}


@dataclass
class Dockerfile:
    """The instructions that matter here, from a Dockerfile's text."""
    path: Path
    args: dict[str, str | None] = field(default_factory=dict)  # ARGs before FROM -> default
    base: str = ""
    copies: dict[str, str] = field(default_factory=dict)  # absolute destination file or folder -> source
    runs: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    workdirs: list[str] = field(default_factory=list)  # the WORKDIR in force at each RUN

    @classmethod
    def parse(cls, path: Path) -> "Dockerfile":
        text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                                if not line.lstrip().startswith("#")))
        parsed, workdir = cls(path), "/"
        for line in filter(None, map(str.strip, text.splitlines())):
            instruction, _, rest = line.partition(" ")
            instruction, rest = instruction.upper(), rest.strip()
            if instruction == "ARG" and not parsed.base:
                name, sep, default = rest.partition("=")
                parsed.args[name] = default if sep else None
            elif instruction == "FROM":
                assert not parsed.base, f"{path.name}: one stage expected"
                parsed.base = rest
            elif instruction == "WORKDIR":
                workdir = posixpath.join(workdir, rest)
            elif instruction == "COPY":
                *sources, dest = [word for word in shlex.split(rest) if not word.startswith("--")]
                dest = posixpath.normpath(posixpath.join(workdir, dest))
                for source in sources:
                    target = posixpath.join(dest, posixpath.basename(source)) if len(sources) > 1 or \
                        rest.rstrip().endswith("/") else dest
                    parsed.copies[posixpath.normpath(target)] = source
            elif instruction == "RUN":
                parsed.runs.append(rest)
                parsed.workdirs.append(workdir)
            elif instruction in ("ENTRYPOINT", "CMD"):
                parsed.entrypoint = json.loads(rest)
        return parsed

    def source_of(self, container_path: str, workdir: str) -> str | None:
        """The build-context path a file in the image came from, if a COPY put it there."""
        target = posixpath.normpath(posixpath.join(workdir, container_path))
        for dest, source in self.copies.items():
            if target == dest or target.startswith(dest + "/"):
                return posixpath.normpath(posixpath.join(source, posixpath.relpath(target, dest)))
        return None

    def pip_installs(self) -> list[tuple[list[str], str]]:
        """(arguments after `pip install`, the WORKDIR) of each pip install in a RUN."""
        installs = []
        for run, workdir in zip(self.runs, self.workdirs):
            for command in re.split(r"&&|;", run):
                words = shlex.split(command)
                if "pip" in words and words[words.index("pip") + 1:words.index("pip") + 2] == ["install"]:
                    installs.append((words[words.index("pip") + 2:], workdir))
        return installs


PARSED = {path.name: Dockerfile.parse(path) for path in DOCKERFILES}


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps a path out of the build context (Docker's rule: the last pattern
    matching the path or one of its parents wins; `!` re-includes)."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?"
                            else re.escape(part) for part in re.split(r"(\*\*|\*|\?)", pattern))
            patterns.append((negated, re.compile(regex.replace(".*/", "(.*/)?"))))
    parts = Path(relative).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def make_images_builds() -> dict[str, dict]:
    """The `docker build` commands `make images` runs, by Dockerfile name: {"tag", "build_args"}."""
    out = subprocess.run(["make", "--no-print-directory", "-n", "images", f"PYTHON={sys.executable}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    builds = {}
    for line in out.splitlines():
        words = shlex.split(line)
        assert words[:2] == ["docker", "build"] and words[-1] == ".", line
        options = dict(zip(words[2:-1:2], words[3:-1:2]))
        args = [words[i + 1] for i, word in enumerate(words) if word == "--build-arg"]
        builds[Path(options["-f"]).name] = {"tag": options["-t"],
                                            "build_args": dict(arg.split("=", 1) for arg in args)}
    return builds


def test_make_images_builds_each_dockerfile_with_the_names_and_bases_of_components_images():
    builds = make_images_builds()
    assert sorted(builds) == sorted(PARSED), "`make images` must build every images/*.Dockerfile"
    assert sorted(b["tag"] for b in builds.values()) == sorted([images.RUNTIME_IMAGE, images.TRAIN_IMAGE,
                                                              images.TRITON_IMAGE, images.TRANSFORMER_IMAGE])
    for name, build in builds.items():
        dockerfile = PARSED[name]
        assert all(default is None for default in dockerfile.args.values()), \
            f"{name}: a base ARG with a default is a second place naming it; components/images.py is the one"
        assert build["build_args"].keys() == dockerfile.args.keys(), name
        for arg, value in build["build_args"].items():
            assert value == getattr(images, arg), f"{name}: --build-arg {arg} is not components/images.py's"
        assert re.fullmatch(r"\$\{?(\w+)\}?", dockerfile.base), f"{name}: FROM must name a build ARG"
        assert dockerfile.base.strip("${}") in dockerfile.args, name


def test_bases_agree_with_the_tested_set():
    torch = CONSTRAINTS["torch"]
    assert images.TRAIN_BASE.split(":")[1].startswith(f"{torch}-cuda"), \
        f"the training base's torch must be constraints.txt's {torch}, so the install keeps the base's CUDA build"
    python = images.RUNTIME_BASE.split(":")[1].split("-")[0]
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", \
        "the runtime base's Python must be the one constraints.txt was resolved (and tested) with"
    assert PYPROJECT["project"]["requires-python"] == f">={python}"
    assert images.TRANSFORMER_BASE.split(":")[1].split("-")[0] == python  # installs at constraints.txt's versions
    # engines built by trtexec load only in the TensorRT of the serving Triton: one NGC release for both
    assert images.TRITON_BASE.split(":")[1] == images.TENSORRT_IMAGE.split(":")[1] == f"{images.TRITON_RELEASE}-py3"


@pytest.mark.parametrize("name", sorted(PARSED))
def test_copied_paths_exist_in_the_build_context(name):
    assert PARSED[name].copies, name
    for source in PARSED[name].copies.values():
        assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path in the repository"
        assert not dockerignored(source), f"{name}: COPY {source}: .dockerignore keeps it out of the build context"


def test_build_context_leaves_out_runs_environments_and_git():
    for path in ("runs/train/checkpoints", ".venv/bin/python", ".git/HEAD", "components/__pycache__/images.pyc",
                 "tests/test_images.py", "dvc.lock"):
        assert dockerignored(path), path
    assert not dockerignored("components/serve/triton_models/onnx_model.py")


@pytest.mark.parametrize("name", sorted(PARSED))
def test_pip_installs_only_the_tested_set(name):
    dockerfile = PARSED[name]
    assert dockerfile.pip_installs(), f"{name} installs nothing"
    for words, workdir in dockerfile.pip_installs():
        constraint = words[words.index("-c") + 1] if "-c" in words else None
        assert constraint and dockerfile.source_of(constraint, workdir) == "constraints.txt", \
            f"{name}: every pip install takes -c constraints.txt (copied in), so versions are the tested ones"
        packages = [word for i, word in enumerate(words) if not word.startswith("-") and words[i - 1] != "-c"]
        for package in packages:
            if package == ".":
                assert dockerfile.source_of("pyproject.toml", workdir) == "pyproject.toml", name
                readme = PYPROJECT["project"]["readme"]
                assert dockerfile.source_of(readme, workdir) == readme, f"{name}: pyproject's readme is not copied"
                continue
            requirement, _, pin = package.partition("==")
            requirement = normalize(re.sub(r"\[.*\]", "", requirement))
            assert requirement in CONSTRAINTS, f"{name}: {package} is not in constraints.txt"
            assert not pin or pin == CONSTRAINTS[requirement], f"{name}: {package} disagrees with constraints.txt"


def test_entry_points_exist():
    scripts = PYPROJECT["project"]["scripts"]
    for name, dockerfile in PARSED.items():
        command = dockerfile.entrypoint
        if not command:
            continue  # the base's own entry point (tritonserver)
        if command[0] in ("python", "python3", "torchrun"):
            module = command[command.index("-m") + 1]
            spec = importlib.util.find_spec(module)
            assert spec is not None, f"{name}: no module {module}"
            if spec.submodule_search_locations:
                assert importlib.util.find_spec(f"{module}.__main__"), f"{name}: {module} has no __main__"
        else:
            assert command[0] in scripts, f"{name}: {command[0]} is not a console script in pyproject.toml"


def files_read_beside_the_source() -> set[str]:
    """Repository files the code reads by a path relative to its own file (module-level constants such as
    `Path(__file__).parents[2] / "manifests" / ...`) that lie outside the installed packages. Found from the
    source with ast, not by importing every module (kserve and tritonclient.grpc cannot share a process)."""
    packages = ("kubeclip", "model", "components", "pipelines")
    found = set()
    for package in packages:
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.parse(source.read_text()).body:
                if not isinstance(node, ast.Assign) or "__file__" not in ast.unparse(node.value):
                    continue
                try:
                    value = eval(ast.unparse(node.value), {"Path": Path, "__file__": str(source)})
                except NameError:
                    continue  # built from another module's location
                relative = Path(value).resolve().relative_to(ROOT)
                if relative.parts and relative.parts[0] not in packages:  # not the checkout root itself (cwd)
                    found.add(relative.as_posix())
    return found


@pytest.mark.parametrize("name", ["runtime.Dockerfile", "train.Dockerfile"])
def test_files_the_code_reads_beside_the_source_are_in_the_image(name):
    dockerfile = PARSED[name]
    wanted = files_read_beside_the_source()
    assert "manifests/base/serving/clip.yaml" in wanted  # the deploy step's template: the search finds it
    (words, workdir), = [(w, d) for w, d in dockerfile.pip_installs() if "." in w]
    assert "-e" in words, f"{name}: installed into site-packages, the package would not find {sorted(wanted)}"
    for relative in wanted:
        assert dockerfile.source_of(relative, workdir) == relative, f"{name}: {relative} is not copied beside it"


# imported inside functions that serving never calls (the tokenizer's __call__, which returns a tensor;
# serving calls padded_ids and padded_ids_and_mask)
NEVER_IMPORTED_BY_SERVING = {"torch"}


def test_triton_image_installs_every_library_the_python_models_import():
    """Derived from the source of the files `kubeclip triton-repo` copies into the Python models: imports at
    module level and inside functions (the Hugging Face tokenizer imports `tokenizers` only when used)."""
    distributions = importlib.metadata.packages_distributions()
    needed = set()
    for files in _PYTHON_FILES.values():
        siblings = {Path(name).stem for name in files}
        for source in files.values():
            for node in ast.walk(ast.parse(source.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for top in (n.split(".")[0] for n in names):
                    if top in sys.stdlib_module_names or top in siblings or top in PROVIDED_BY_TRITON \
                            or top in NEVER_IMPORTED_BY_SERVING or top == "__future__":
                        continue
                    assert top in distributions, f"{source.name} imports {top}, which no installed package provides"
                    needed.update(normalize(d) for d in distributions[top])
    assert {"numpy", "pillow", "ftfy", "regex", "onnxruntime", "tokenizers"} <= needed  # the search sees them
    (words, _), = PARSED["triton.Dockerfile"].pip_installs()
    installed = {normalize(w.partition("==")[0]) for i, w in enumerate(words)
                 if not w.startswith("-") and words[i - 1] != "-c"}
    assert needed <= installed, f"the Triton image lacks {sorted(needed - installed)}"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {normalize(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in requirements}


def module_level_imports(module: str) -> set[str]:
    """Distributions a module imports at module level, itself and through the kubeclip modules it imports so
    (read with ast, nothing is imported but the parent packages find_spec needs)."""
    distributions = importlib.metadata.packages_distributions()
    needed, seen, todo = set(), set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__ run first
        for node in ast.parse(Path(importlib.util.find_spec(name).origin).read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for imported in names:
                top = imported.split(".")[0]
                if top == "kubeclip":
                    todo.append(imported if importlib.util.find_spec(imported) else imported.rpartition(".")[0])
                elif top not in sys.stdlib_module_names and top != "__future__":
                    assert top in distributions, f"{name} imports {top}, which no installed package provides"
                    needed.update(normalize(d) for d in distributions[top])
    return needed


def test_transformer_extra_holds_what_the_transformer_imports():
    extra = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["transformer"])
    assert module_level_imports("kubeclip.components.serve.transformer") <= extra
    assert {"kserve", "numpy", "pillow", "prometheus-client"} <= extra  # pillow: through queries' image checks
    assert not extra & {"torch", "torchvision", "tritonclient", "onnxruntime", "nvidia-pytriton"}


def test_transformer_image_installs_the_extra_and_kubeclip_without_its_dependencies():
    (deps, _), (package, _) = PARSED["transformer.Dockerfile"].pip_installs()
    listed = [w for i, w in enumerate(deps) if not w.startswith("-") and deps[i - 1] != "-c"]
    extra = PYPROJECT["project"]["optional-dependencies"]["transformer"]
    assert _requirement_names(listed) == _requirement_names(extra), "the Dockerfile's list must be the extra"
    assert len(listed) == len(set(listed))
    assert "--no-deps" in package and package[-1] == ".", "kubeclip itself must bring nothing else (torch)"
    assert PARSED["transformer.Dockerfile"].entrypoint == ["python", "-m", "kubeclip.components.serve.transformer"]
