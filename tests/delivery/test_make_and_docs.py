"""The Makefile, the chart and the two install guides tell the same story."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.delivery.injection import CHART, REPO


def sh_block(markdown: str, heading: str) -> list[str]:
    """The command lines of the first ```sh block under `heading` (continuations joined, comments dropped)."""
    section = markdown.split(heading, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", re.sub(r"\s+", " ", line)).strip() for line in block.splitlines() if line.strip()]


def test_readme_install_block_has_every_step_of_the_delivery_guide():
    readme = sh_block((REPO / "README.md").read_text(), "## Install on a cluster")
    guide = sh_block((REPO / "docs" / "delivery.md").read_text(), "## Install")
    missing = [line for line in guide if line not in readme]
    assert not missing, f"README.md's install block lacks: {missing}"
    assert "make push-images" in readme


def makefile_targets() -> set[str]:
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)$", (REPO / "Makefile").read_text(), re.M | re.S).group(1)
    return set(phony.replace("\\", " ").split())


def test_make_help_lists_every_target():
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed (apt-get install make)")
    out = subprocess.run(["make", "-s", "-C", str(REPO)], capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line and not line.startswith("variables:")}
    assert listed == makefile_targets(), "every .PHONY target needs a `## description` (and `make` alone shows help)"


def test_chart_comment_and_makefile_fetch_the_dependencies_the_same_way():
    make = re.search(r"^chart-deps:.*\n\t\$\(HELM\) (dependency \w+) charts/amesh$", (REPO / "Makefile").read_text(), re.M)
    assert make, "Makefile chart-deps should run `$(HELM) dependency <verb> charts/amesh`"
    assert f"`helm {make.group(1)} charts/amesh`" in (CHART / "Chart.yaml").read_text()
