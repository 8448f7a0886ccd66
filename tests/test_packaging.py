"""The pins in pyproject.toml and conda.yaml must agree (mlflow run with conda builds from conda.yaml)."""

import tomllib

import yaml

from tests.conftest import REPO


def test_conda_yaml_carries_the_pyproject_pins():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(deps) == sorted(d for d in pip_deps if d != "-e .")
    assert "python=3.11" in conda["dependencies"]


def test_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lesion"] == "lesion.cli:main"
