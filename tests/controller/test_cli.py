"""amesh-controller refuses bad settings with a message naming the problem, before touching anything."""

from __future__ import annotations

from click.testing import CliRunner

from controller.cli import main


def test_missing_schema_dir(tmp_path):
    result = CliRunner().invoke(main, ["--kube-url", "http://127.0.0.1:9", "--schema-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}: not an APISIX schema directory (no core/route.json)" in result.output


def test_not_in_cluster_without_kube_url(tmp_path, monkeypatch):
    for name in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["--schema-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no Kubernetes API server to talk to: not running in a pod")
    assert "Kubernetes API 0" not in result.output


def test_bad_kube_url(tmp_path):
    result = CliRunner().invoke(main, ["--kube-url", "ftp://x", "--schema-dir", str(tmp_path)])
    assert result.exit_code == 1 and "bad API server URL 'ftp://x' (expected http:// or https://host)" in result.output
