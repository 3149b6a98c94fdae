"""One installed package, `kubeclip`: a real `pip install .` into a fresh environment puts nothing generic at
the top level, the console script runs, and importing the package loads no heavy library."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import kubeclip
from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "kubeclip", "model", "components", "pipelines", "manifests")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def run_python(python: str | Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_package_folder_is_mapped_into_kubeclip():
    folders = {"kubeclip": "kubeclip", **{f"kubeclip.{name}": name for name in ("model", "components", "pipelines")}}
    assert PYPROJECT["package-dir"] == folders
    found = {f"{package}.{'.'.join(init.parent.relative_to(ROOT / folder).parts)}".rstrip(".")
             for package, folder in folders.items() for init in (ROOT / folder).rglob("__init__.py")}
    assert sorted(PYPROJECT["packages"]) == sorted(found)


def test_import_kubeclip_loads_no_heavy_library(tmp_path):
    code = ("import sys, kubeclip, kubeclip.model, kubeclip.model.prompts\n"
            "heavy = sorted({'torch', 'kfp', 'kserve', 'tritonclient', 'onnxruntime'} & sys.modules.keys())\n"
            "assert not heavy, heavy\n"
            "assert callable(kubeclip.create_model_and_transforms) and 'torch' in sys.modules\n")
    done = run_python(sys.executable, code, tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding a wheel of the project (a regular install, not editable); its dependencies are read
    from this environment's site-packages, added as a plain path (so the editable install's finder stays off)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(root / "wheel"), str(source)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    *(root / "wheel").glob("kubeclip-*.whl")], check=True, timeout=300)
    site = Path(run_python(python, "import sysconfig; print(sysconfig.get_path('purelib'))", root).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


def test_pip_install_puts_one_package_at_the_top_level(installed):
    python, work = installed / "venv" / "bin" / "python", installed / "elsewhere"
    work.mkdir()
    (work / "model.py").write_text("raise SystemExit('the user\\'s own model.py was imported')\n")  # must not shadow
    code = ("import importlib.util, sysconfig, os, kubeclip\n"
            "assert kubeclip.__file__.startswith(sysconfig.get_path('purelib')), kubeclip.__file__\n"
            "top = sorted(n for n in os.listdir(sysconfig.get_path('purelib'))\n"
            "             if not n.endswith(('.pth', '.dist-info')))\n"
            "assert top == ['kubeclip'], top\n"
            "for name in ('components', 'pipelines'):\n"
            "    assert importlib.util.find_spec(name) is None, name\n"
            "from kubeclip.components.deploy.step import TEMPLATE\n"
            "from kubeclip.components.train.launcher import TEMPLATE as JOB\n"
            "from kubeclip.pipelines.run import COMPILED\n"
            "assert TEMPLATE.is_file() and JOB.is_file() and COMPILED.is_file()\n"
            "print(kubeclip.__version__, kubeclip.model.available_models())\n")
    done = run_python(python, code, work)
    assert done.returncode == 0, done.stderr
    version, models = done.stdout.split(" ", 1)
    assert version == kubeclip.__version__ and "tiny-vit" in models
    assert run_python(python, "import model", installed).returncode != 0  # not in site-packages either
    cli = subprocess.run([str(installed / "venv" / "bin" / "kubeclip"), "--help"], cwd=work, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0 and "prepare" in cli.stdout, cli.stderr
