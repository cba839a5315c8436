"""`amesh-agent translate` as a person uses it: expected failures in one line, the summary, the report."""

from __future__ import annotations

import os
import pytest
from click.testing import CliRunner

from sidecar_agent.cli import main

from .conftest import GOLDEN, REPO, SCHEMAS

BOOKINFO = REPO / "e2e" / "bookinfo" / "productpage.config_dump.json"


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


@pytest.mark.parametrize("text", ["", "[]", '{"configs": []}', "configs: []\n"])
def test_input_without_xds_resources_is_an_error(tmp_path, text):
    """It used to exit 0 with "everything in the input was translated"."""
    path = tmp_path / ("in.yaml" if text.startswith("configs:") else "in.json")
    path.write_text(text)
    line = one_line_error(CliRunner().invoke(main, ["translate", str(path), "--report"]))
    assert f"{path} holds no xDS resources" in line and "everything in the input" not in line


def test_schema_dir_above_the_version_folder_names_the_one_to_use():
    """It used to end in a 28-line traceback."""
    if not (SCHEMAS / "core" / "route.json").is_file():
        pytest.skip("APISIX schemas not found")
    result = CliRunner().invoke(main, ["translate", str(BOOKINFO), "--schema-dir", str(SCHEMAS.parent)])
    assert result.exit_code == 2 and "Traceback" not in result.output  # click's usage error
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: Invalid value for --schema-dir: ")
    assert line.endswith(f"not an APISIX schema directory (no core/route.json); give a version folder, "
                         f"e.g. {SCHEMAS}")


def test_summary_is_short_and_the_document_goes_to_the_file(tmp_path):
    out = tmp_path / "apisix.yaml"
    result = CliRunner().invoke(main, ["translate", str(BOOKINFO), "--format", "yaml", "-o", str(out),
                                       "--summary", "--report"])
    assert result.exit_code == 0, result.output
    assert out.read_text().endswith("#END\n") and out.read_text().startswith("routes:")
    summary = result.stdout
    assert len(summary.splitlines()) < 30
    golden = GOLDEN / "bookinfo-summary.txt"
    text = summary.replace(str(out), "OUT")
    if os.environ.get("REFRESH_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), "summary differs: review, then REFRESH_GOLDEN=1"
    reviews = next(line for line in summary.splitlines() if line.strip().startswith("reviews:9080"))
    assert reviews.endswith("end-user=jason → v2; default → v1")
    report = result.stderr.splitlines()
    assert report[0].startswith("Not translated to APISIX: ") and report[1].split()[:3] == ["count", "kind",
                                                                                            "resource"]


def test_summary_without_output_writes_no_document():
    result = CliRunner().invoke(main, ["translate", str(BOOKINFO), "--summary"])
    assert result.exit_code == 0 and "not written: -o FILE writes it" in result.stdout
    assert "routes:" not in result.stdout and '"routes"' not in result.stdout


def test_unparsable_input_and_unwritable_output_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    assert one_line_error(CliRunner().invoke(main, ["translate", str(bad)])).startswith(
        f"Error: invalid input: {bad}: neither JSON nor YAML")
    line = one_line_error(CliRunner().invoke(main, ["translate", str(BOOKINFO), "-o", str(tmp_path / "no" / "x")]))
    assert line == f"Error: cannot write {tmp_path / 'no' / 'x'}: No such file or directory; give -o a file in an " \
                   "existing, writable directory"
