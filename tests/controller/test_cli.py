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


def test_the_plugin_stream_needs_its_certificate(tmp_path):
    from tests.controller.conftest import SCHEMA_DIR

    missing = tmp_path / "tls.crt"
    result = CliRunner().invoke(main, ["--kube-url", "http://127.0.0.1:9", "--schema-dir", str(SCHEMA_DIR),
                                       "--tls-cert-file", str(missing), "--tls-key-file", str(tmp_path / "tls.key")])
    assert result.exit_code == 1
    assert f"plugin stream TLS: cannot read {missing}: No such file or directory" in result.output


def test_defaults_of_the_security_flags():
    params = {p.name: p for p in main.params}
    assert params["audiences"].default == ("amesh-controller",)
    assert params["grpc_host"].default == "::" and params["http_host"].default == "::"
    assert params["insecure_plaintext"].default is False and params["allowed_plugins"].default == "*"
    assert str(params["tls_cert_file"].default) == "/etc/amesh-controller/tls/tls.crt"


def test_a_certificate_and_a_key_that_do_not_match_are_refused(tmp_path):
    from tests.controller import pki
    from tests.controller.conftest import SCHEMA_DIR

    one, two = pki.standard(tmp_path / "one"), pki.standard(tmp_path / "two")
    result = CliRunner().invoke(main, ["--kube-url", "http://127.0.0.1:9", "--schema-dir", str(SCHEMA_DIR),
                                       "--tls-cert-file", str(one.cert), "--tls-key-file", str(two.key)])
    assert result.exit_code == 1 and "are not a certificate and its key" in result.output
