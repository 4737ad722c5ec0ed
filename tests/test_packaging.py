"""environment.yml (the conda recipe) and pyproject.toml must name the same dependencies."""
import re
import tomllib

import yaml

from conftest import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    for extra in ("test", "book"):
        pinned.update({_name(r): r.replace(" ", "") for r in project["optional-dependencies"][extra]})
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    conda = {_name(r): r.replace(" ", "") for r in pip_section}
    assert conda == pinned
    # the GPU kernels are an optional extra, never in the default environment
    assert "mamba-ssm" not in conda and "mamba-ssm" in project["optional-dependencies"]["gpu"]
    assert "mamba-ssm" in (ROOT / "environment.yml").read_text()  # documented, commented out
