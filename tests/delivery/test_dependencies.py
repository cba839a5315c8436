"""One list of dependency versions: pyproject.toml names them, constraints.txt pins every one exactly, and
scripts/setup.sh, CI and the three Dockerfiles install through constraints.txt (refresh: `make constraints`)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.iptables", "Dockerfile.sidecar", "Dockerfile.controller")


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "amesh"]  # amesh[controller]: our own extra


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not pinned with =="
            out[canonicalize_name(name)] = version
    return out


def test_every_dependency_is_pinned_within_its_range():
    pinned = pins()
    problems = []
    for req in declared():
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in constraints.txt")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} is outside pyproject's {req.specifier}")
    assert not problems, "run `make constraints`: " + "; ".join(problems)


def test_this_environment_has_the_pinned_versions():
    pinned = pins()
    wrong = {r.name: (metadata.version(r.name), pinned[canonicalize_name(r.name)]) for r in declared()
             if metadata.version(r.name) != pinned[canonicalize_name(r.name)]}
    assert not wrong, f"installed vs constraints.txt: {wrong}; run scripts/setup.sh"


def test_installers_use_the_constraints_and_name_no_versions():
    assert "pip install -q -c constraints.txt -e '.[test]'" in (REPO / "scripts/setup.sh").read_text()
    names = {canonicalize_name(r.name) for r in declared()}
    for name in DOCKERFILES:
        text = (REPO / name).read_text().replace("\\\n", " ")
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert installs, name
        for line in installs:
            for command in re.findall(r"pip install ([^&]*)", line):
                assert "-c /src/constraints.txt" in command or "--no-deps" in command, f"{name}: {command}"
                assert not re.search(r"[<>=~]=|[<>]", command), f"{name}: versions belong in constraints.txt: {command}"
                bare = [w for w in command.split() if not w.startswith(("-", "/", '"/')) and w != "/src/constraints.txt"]
                assert set(map(canonicalize_name, bare)) <= names, f"{name}: {bare} not all in pyproject.toml"
