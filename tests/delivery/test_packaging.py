"""What ships and who imports whom: the wheel (and so the images) carries no test support, and the
dependencies between our packages point one way — controller → sidecar_agent → amesh_common."""

from __future__ import annotations

import ast
import tomllib

from setuptools import find_packages

from tests.delivery.injection import REPO

# package -> top-level packages of ours it must not import
FORBIDDEN = {"amesh_common": {"controller", "sidecar_agent", "init", "amesh_testing", "tests"},
             "sidecar_agent": {"controller", "amesh_testing", "tests"},
             "controller": {"amesh_testing", "tests"},
             "init": {"controller", "sidecar_agent", "amesh_common", "amesh_testing", "tests"}}


def shipped_packages() -> list[str]:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return find_packages(str(REPO), include=find["include"], exclude=find.get("exclude", ()))


def imported_tops(path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_the_wheel_ships_no_test_support():
    tops = {name.split(".")[0] for name in shipped_packages()}
    assert "amesh_testing" not in tops and {"init", "sidecar_agent", "controller", "amesh_common"} <= tops
    assert (REPO / "amesh_testing" / "istiogen.py").is_file() and (REPO / "amesh_testing" / "ads_server.py").is_file()


def test_imports_point_one_way():
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / package).rglob("*.py")):
            bad = imported_tops(path) & forbidden
            if bad:
                wrong.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not wrong, "\n".join(wrong)
