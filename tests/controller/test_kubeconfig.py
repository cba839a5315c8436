"""Outside the cluster the controller finds the API server as kubectl does: --kubeconfig / KUBECONFIG, the
current context (or --context), the cluster's CA, token, exec-plugin and client-certificate users."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from controller import kube
from controller.cli import main
from controller.kube import Kube, KubeConfigError
from controller.kubeconfig import from_kubeconfig, resolve
from tests.controller.fake_api import FakeApi


def write_kubeconfig(path, clusters: dict, users: dict, contexts: dict, current: str) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
        "contexts": [{"name": n, "context": {"cluster": c, "user": u}} for n, (c, u) in contexts.items()]}))
    return str(path)


@pytest.fixture
def api():
    server = FakeApi()
    yield server
    server.close()


def test_current_context_and_its_token(api, tmp_path):
    path = write_kubeconfig(tmp_path / "config", {"dev": {"server": api.url}, "prod": {"server": "http://127.0.0.1:9"}},
                            {"me": {"token": "dev-token"}, "ops": {"token": "prod-token"}},
                            {"dev": ("dev", "me"), "prod": ("prod", "ops")}, current="dev")
    Kube(from_kubeconfig(path), timeout=5).list(kube.PODS)
    assert api.authorizations == ["Bearer dev-token"]
    assert from_kubeconfig(path, context="prod").base_url == "http://127.0.0.1:9"
    with pytest.raises(KubeConfigError, match="kubeconfig .*config: .*nope"):
        from_kubeconfig(path, context="nope")


def test_exec_user_token_is_refreshed_when_expired(api, tmp_path):
    """An exec credential plugin (what cloud kubeconfigs use) is run again once its token has expired."""
    counter = tmp_path / "runs"
    plugin = tmp_path / "get-token.py"
    plugin.write_text(
        "import json, pathlib\n"
        f"p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n))\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "  'status': {'token': f'exec-token-{n}', 'expirationTimestamp': '2000-01-01T00:00:00Z'}}))\n")
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                          "args": [str(plugin)], "interactiveMode": "Never"}}
    path = write_kubeconfig(tmp_path / "config", {"c": {"server": api.url}}, {"u": exec_user}, {"x": ("c", "u")}, "x")
    client = Kube(from_kubeconfig(path), timeout=5)
    client.list(kube.PODS)
    client.list(kube.PODS)
    assert api.authorizations[0].startswith("Bearer exec-token-")
    assert len(set(api.authorizations)) == 2, api.authorizations  # expired: the plugin ran again


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available (scripts/setup.sh installs it)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test cluster CA",
             cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp_path)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext", cwd=tmp_path)
    return tmp_path


def test_https_cluster_ca_data_and_client_certificate(pki):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    tls.load_cert_chain(pki / "server.pem", pki / "server.key")
    tls.verify_mode = ssl.CERT_REQUIRED  # the API server checks our client certificate
    server = FakeApi(tls=tls)
    try:
        data = {n: base64.b64encode((pki / n).read_bytes()).decode() for n in ("ca.pem", "client.pem", "client.key")}
        path = write_kubeconfig(pki / "config", {"c": {"server": server.url, "certificate-authority-data": data["ca.pem"]}},
                                {"u": {"client-certificate-data": data["client.pem"],
                                       "client-key-data": data["client.key"]}}, {"x": ("c", "u")}, "x")
        items, _ = Kube(from_kubeconfig(path), timeout=5).list(kube.PODS)
        assert items == [] and server.authorizations == [None]
        # Without the cluster's CA the same server is refused.
        other = write_kubeconfig(pki / "other", {"c": {"server": server.url}}, {"u": {"token": "t"}}, {"x": ("c", "u")}, "x")
        with pytest.raises(ssl.SSLCertVerificationError):
            Kube(from_kubeconfig(other), timeout=5).list(kube.PODS)
    finally:
        server.close()


def test_order_kube_url_then_kubeconfig_then_pod_then_home(tmp_path):
    path = write_kubeconfig(tmp_path / "k", {"c": {"server": "https://kubeconfig:6443"}}, {"u": {"token": "t"}},
                            {"x": ("c", "u")}, "x")
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOME": str(tmp_path)}
    assert resolve("http://flag:1", env={**pod, "KUBECONFIG": path}).base_url == "http://flag:1"
    assert resolve(env={**pod, "KUBECONFIG": path}).base_url == "https://kubeconfig:6443"
    assert resolve(kubeconfig=path, env=pod).base_url == "https://kubeconfig:6443"
    assert resolve(env=pod).base_url == "https://10.0.0.1:443"
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text((tmp_path / "k").read_text())
    assert resolve(env={"HOME": str(tmp_path)}).base_url == "https://kubeconfig:6443"


def test_nowhere_to_connect_says_what_to_do(tmp_path):
    with pytest.raises(KubeConfigError) as exc:
        resolve(env={"HOME": str(tmp_path)})
    assert str(exc.value) == (
        "no Kubernetes API server to talk to: not running in a pod (KUBERNETES_SERVICE_HOST is unset) and no "
        f"kubeconfig ({tmp_path}/.kube/config does not exist); pass --kubeconfig FILE (or set KUBECONFIG) or "
        "--kube-url URL")


def test_cli_reads_kubeconfig_from_the_environment(tmp_path):
    result = CliRunner().invoke(main, ["--schema-dir", str(tmp_path)], env={"KUBECONFIG": str(tmp_path / "absent")})
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: kubeconfig {tmp_path / 'absent'}: no such file"
    broken = tmp_path / "broken"
    broken.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "gone"}))
    result = CliRunner().invoke(main, ["--kubeconfig", str(broken), "--schema-dir", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith(f"Error: kubeconfig {broken}: ")
    broken.write_text("clusters: [\n")
    result = CliRunner().invoke(main, ["--kubeconfig", str(broken), "--schema-dir", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith(f"Error: kubeconfig {broken}: ")
