"""The pins in pyproject.toml, conda.yaml and constraints.txt must agree (mlflow run with conda builds from conda.yaml;
make venv installs the exact versions of constraints.txt)."""

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


def test_constraints_pin_every_dependency_within_the_pyproject_ranges():
    # make venv installs with -c constraints.txt: each direct dependency needs an exact version there, and one
    # that pyproject.toml allows, or the install fails (or, worse, the benchmarks ran on something else).
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["test"]
    pinned = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pinned[canonicalize_name(req.name)] = spec.version
    for dep in map(Requirement, direct):
        name = canonicalize_name(dep.name)
        assert name in pinned, f"{dep.name} is not in constraints.txt: run make lock"
        assert dep.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {dep.name}=={pinned[name]}, outside pyproject's {dep.specifier}: run make lock")
    assert "albumentationsx" not in pinned  # AGPL; albumentations (MIT) only
