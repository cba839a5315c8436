"""Both charts rendered by Helm's engine, and every manifest (charts, CRD, Bookinfo) checked against
Kubernetes' own schemas with kubernetes-validate, offline."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from init.cli import parse_flags
from init.config import build_config
from tests.delivery.injection import CHART, REPO, SamplePod, container, inject

kubernetes_validate = pytest.importorskip("kubernetes_validate")
import helm_python as helm  # noqa: E402  (conftest skips the module without it)

K8S = "1.30"  # oldest release the charts claim, within what kubernetes-validate ships
CONTROLLER_CHART = REPO / "controller" / "charts" / "amesh-controller"
CRD_DIR = REPO / "controller" / "config" / "crd"
BOOKINFO = REPO / "e2e" / "bookinfo"

INSTALL_STEP_VALUES = {  # the --set flags of the install steps (docs/delivery.md)
    "pilot": {"image": "istio/pilot:1.13.1"},
    "global": {"proxy": {"privileged": True, "image": "docker.io/me/amesh-sidecar:dev"},
               "proxy_init": {"image": "docker.io/me/amesh-iptables:dev"},
               "imagePullPolicy": "IfNotPresent", "hub": "docker.io/istio", "tag": "1.13.1"},
}


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(chart_dir: Path, values: dict, name: str) -> list[dict]:
    with helm.Chart.load(chart_dir) as chart:
        out = chart.render(values, name=name, namespace="istio-system", is_install=True)
    return [doc for path, text in sorted(out.items()) if not path.endswith("NOTES.txt") for doc in documents(text)]


def test_amesh_chart_renders_with_the_install_step_values():
    render(CHART, INSTALL_STEP_VALUES, "amesh")  # checks.yaml would fail() on contradicting values


def test_pilot_image_that_istiod_would_not_run_is_refused():
    with pytest.raises(helm.HelmRenderError, match="istiod.pilot.image=istio/pilot:1.20.0"):
        render(CHART, {"pilot": {"image": "istio/pilot:1.20.0"}}, "amesh")
    render(CHART, {"pilot": {"image": "istio/pilot:1.20.0"}, "istiod": {"pilot": {"image": "istio/pilot:1.20.0"}}},
           "amesh")


def test_empty_image_is_refused_by_name():
    with pytest.raises(helm.HelmRenderError, match="global.proxy_init.image is empty"):
        render(CHART, {"global": {"proxy_init": {"image": ""}}}, "amesh")


def test_istiod_and_base_are_declared_dependencies():
    deps = {d["name"]: d for d in helm.dependency_list(CHART)}
    assert set(deps) == {"istiod", "base"}
    assert all(d["repository"] == "https://istio-release.storage.googleapis.com/charts" for d in deps.values())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["istiod"]["sidecarInjectorWebhook"]["defaultTemplates"] == ["amesh"]


ISTIOD_SKIP = ("charts/amesh/charts/ holds no fetched istiod-*.tgz: Istio's chart repository is not reachable from "
               "here; fetch it with `make chart-deps` (helm dependency update charts/amesh) on a machine that reaches "
               "https://istio-release.storage.googleapis.com/charts")


def test_istiod_renders_our_template_into_its_injector_configmap():
    """charts/amesh rendered with the fetched istiod chart, when it is there."""
    if not list((CHART / "charts").glob("istiod-*.tgz")):
        pytest.skip(ISTIOD_SKIP)
    with helm.Chart.load(CHART) as chart:
        assert "istiod" in {d["name"] for d in chart.dependencies}
    docs = render(CHART, INSTALL_STEP_VALUES, "amesh")
    injector = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "istio-sidecar-injector")
    config = yaml.safe_load(injector["data"]["config"])
    assert config["defaultTemplates"] == ["amesh"] and "amesh.patch" in config["templates"]["amesh"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=False)


def test_controller_chart_manifests_are_valid():
    docs = render(CONTROLLER_CHART, {}, "amesh-controller")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
                     "ConfigMap"}
    service = next(d for d in docs if d["kind"] == "Service")
    # The name and port the injection template gives the sidecars (AMESH_CONTROLLER_ADDRESS).
    assert service["metadata"]["name"] == "amesh-controller"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 15810
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    selector = next(d for d in docs if d["kind"] == "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items() and selector.items() <= service["spec"]["selector"].items()


def test_controller_image_value_is_used():
    docs = render(CONTROLLER_CHART, {"image": {"repository": "docker.io/me/amesh-controller", "tag": "v1"}}, "c")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "docker.io/me/amesh-controller:v1"


def test_controller_image_defaults_to_what_make_built(tmp_path):
    # The install step `helm install amesh-controller ./controller/charts/amesh-controller` sets no image:
    # the chart takes the one `make prepare-images` recorded, else the localhost default.
    import shutil

    chart = tmp_path / "amesh-controller"
    shutil.copytree(CONTROLLER_CHART, chart)
    (chart / "built-image").unlink(missing_ok=True)
    image = lambda: next(d for d in render(chart, {}, "c") if d["kind"] == "Deployment")[  # noqa: E731
        "spec"]["template"]["spec"]["containers"][0]["image"]
    assert image() == "localhost:5000/amesh-controller:dev"
    (chart / "built-image").write_text("docker.io/me/amesh-controller:dev\n")
    assert image() == "docker.io/me/amesh-controller:dev"


def crd() -> dict:
    kustomization = yaml.safe_load((CRD_DIR / "kustomization.yaml").read_text())
    (path,) = kustomization["resources"]
    return yaml.safe_load((CRD_DIR / path).read_text())


def test_crd_is_a_valid_crd_with_short_name_and_columns():
    doc = crd()
    kubernetes_validate.validate(doc, K8S, strict=True)
    spec = doc["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["scope"]) == ("apisix.apache.org", "AmeshPluginConfig", "Namespaced")
    assert spec["names"]["shortNames"] == ["ampc"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Plugins", "Pods", "Ready", "Age"}


def plugin_config(spec: dict) -> dict:
    return {"apiVersion": "apisix.apache.org/v1alpha1", "kind": "AmeshPluginConfig",
            "metadata": {"name": "rewrite", "namespace": "default"}, "spec": spec}


VALID = {"selector": {"matchLabels": {"app": "reviews"}},
         "plugins": [{"name": "response-rewrite", "type": "", "direction": "inbound",
                      "config": {"body": "BODY_REWRITE", "headers": {"set": {"X-Header": "Rewrite"}}}}]}


@pytest.mark.parametrize("spec, problem", [
    ({"plugins": []}, "minItems"),  # nothing to attach
    ({"plugins": [{"name": "response-rewrite", "config": '{"body": "x"}'}]}, "type"),  # Amesh's JSON string
    ({"plugins": [{"name": "response-rewrite", "type": "pre", "config": {}}]}, "enum"),
    ({"plugins": [{"name": "response-rewrite", "config": {}, "direction": "sideways"}]}, "enum"),
    ({"plugins": [{"config": {}}]}, "required"),
    ({"selector": {"matchExpressions": [{"key": "app", "operator": "Like"}]}, "plugins": [{"name": "cors"}]}, "enum"),
])
def test_crd_schema_rejects_bad_configs(spec, problem):
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(plugin_config(VALID), schema)
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(plugin_config(spec), schema)
    assert err.value.validator == problem


def bookinfo() -> list[dict]:
    return documents((BOOKINFO / "bookinfo.yaml").read_text())


def test_bookinfo_manifests_are_valid_and_complete():
    docs = bookinfo()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"productpage-v1", "details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        app, version = pod["metadata"]["labels"]["app"], pod["metadata"]["labels"]["version"]
        assert services[app]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["serviceAccountName"] in accounts
        (app_container,) = pod["spec"]["containers"]
        assert app_container["image"].startswith(f"docker.io/istio/examples-bookinfo-{app}-{version}:")
    # Istio needs named ports to tell HTTP from TCP.
    assert all(p["name"].startswith("http") for s in services.values() for p in s["spec"]["ports"])


def test_every_bookinfo_pod_injects_into_a_valid_pod():
    for deployment in (d for d in bookinfo() if d["kind"] == "Deployment"):
        template = deployment["spec"]["template"]
        sample = SamplePod(name=deployment["metadata"]["name"] + "-x", labels=template["metadata"]["labels"],
                           containers=tuple(template["spec"]["containers"]), deployment=deployment["metadata"]["name"],
                           service_account=template["spec"]["serviceAccountName"])
        pod = inject(sample)
        pod["spec"]["volumes"] = template["spec"].get("volumes", []) + pod["spec"]["volumes"]
        kubernetes_validate.validate(pod, K8S, strict=True)
        init = container(pod, "istio-init", "initContainers")
        assert build_config(parse_flags(init["args"]), "1337").inbound_all


def networking() -> dict[str, list[dict]]:
    return {path.name: documents(path.read_text()) for path in sorted((BOOKINFO / "networking").glob("*.yaml"))}


def test_traffic_management_tasks_are_all_there():
    files = networking()
    kinds = {doc["kind"] for docs in files.values() for doc in docs}
    assert kinds == {"DestinationRule", "VirtualService"}
    https = [http for docs in files.values() for d in docs if d["kind"] == "VirtualService" for http in d["spec"]["http"]]
    assert any(h.get("match", [{}])[0].get("headers", {}).get("end-user") == {"exact": "jason"} for h in https)
    assert any(sorted(r.get("weight", 0) for r in h["route"]) == [50, 50] for h in https)
    assert any("abort" in h.get("fault", {}) for h in https) and any("delay" in h.get("fault", {}) for h in https)
    assert any("timeout" in h for h in https) and any("mirror" in h for h in https)


def test_every_route_names_a_defined_subset():
    subsets = {(d["spec"]["host"], s["name"]) for d in networking()["destination-rule-all.yaml"] for s in d["spec"]["subsets"]}
    bookinfo_hosts = {d["metadata"]["name"] for d in bookinfo() if d["kind"] == "Service"}
    for name, docs in networking().items():
        for doc in docs:
            assert doc["apiVersion"] == "networking.istio.io/v1beta1", name
            if doc["kind"] != "VirtualService":
                continue
            assert set(doc["spec"]["hosts"]) <= bookinfo_hosts, name
            for http in doc["spec"]["http"]:
                targets = [r["destination"] for r in http["route"]] + ([http["mirror"]] if "mirror" in http else [])
                for dest in targets:
                    assert (dest["host"], dest["subset"]) in subsets, (name, dest)
                weights = [r.get("weight") for r in http["route"] if "weight" in r]
                assert not weights or sum(weights) == 100, name


# --- the plugin stream's TLS, audience and allowlist (issue 11 §5) --------------------------------------------

def _controller(values: dict) -> tuple[dict, list[dict]]:
    docs = render(CONTROLLER_CHART, values, "amesh-controller")
    for doc in docs:
        if doc["apiVersion"] in ("v1", "apps/v1", "rbac.authorization.k8s.io/v1"):
            kubernetes_validate.validate(doc, K8S, strict=True)
    return next(d for d in docs if d["kind"] == "Deployment"), docs


def _env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_controller_chart_makes_a_serving_certificate_the_sidecars_can_verify(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    deployment, docs = _controller({"tls": {"caNamespaces": ["default", "bookinfo"]}})
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert (secret["type"], secret["metadata"]["name"]) == ("kubernetes.io/tls", "amesh-controller-tls")
    import base64
    pem = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    cert, ca = x509.load_pem_x509_certificate(pem["tls.crt"]), x509.load_pem_x509_certificate(pem["ca.crt"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(
        x509.DNSName)
    # The name the injection template dials (AMESH_CONTROLLER_ADDRESS) is in it.
    assert "amesh-controller.istio-system.svc" in names and "amesh-controller.istio-system.svc.cluster.local" in names
    # The CA reaches the namespaces whose sidecars mount it (a ConfigMap mounts only in its own namespace).
    maps = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert set(maps) == {"istio-system", "default", "bookinfo"}
    assert all(m["metadata"]["name"] == "amesh-controller-ca" and m["data"]["ca.crt"].encode() == pem["ca.crt"]
               for m in maps.values())
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "amesh-controller-tls"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
    env = _env(deployment)
    assert env["AMESH_CONTROLLER_TLS_CERT_FILE"] == f"{mount['mountPath']}/tls.crt"
    assert env["AMESH_CONTROLLER_TLS_KEY_FILE"] == f"{mount['mountPath']}/tls.key"
    assert env["AMESH_CONTROLLER_TOKEN_AUDIENCES"] == "amesh-controller"
    assert env["AMESH_CONTROLLER_ALLOWED_PLUGINS"] == "*" and "AMESH_CONTROLLER_INSECURE_PLAINTEXT" not in env

    # The rendered files are what the controller serves the stream with over real TLS, and what an agent
    # dialling the injected address verifies it against.
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_bytes(pem[name])
    assert _stream_with(tmp_path) == ["response-rewrite"]


def _stream_with(directory) -> list[str]:
    import asyncio

    from amesh_common.plugin_model import PluginSet
    from sidecar_agent.plugins.client import StreamSecurity
    from tests.controller import pki
    from tests.controller.fake_api import FakeApi, service_account_review
    from tests.controller.test_stream import POD, Side, client_for, plugin_set
    from tests.agent.waiting import eventually

    api = FakeApi()
    api.reviews["web-1-token"] = service_account_review(*POD)

    async def main() -> list[str]:
        side = Side(api, pki.Files(directory / "ca.crt", directory / "tls.crt", directory / "tls.key"))
        side.sets[POD] = plugin_set("1")
        await side.start()
        received: list[PluginSet] = []
        security = StreamSecurity(ca_file=directory / "ca.crt", server_name="amesh-controller.istio-system.svc")
        client = client_for(side.port, "web-1-token", received, security=security)
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: received or client.attempts > 3, timeout=15, what="the set")
            return [p.name for s in received[:1] for p in s.plugins] or [client.last_error]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await side.stop()

    try:
        return asyncio.run(main())
    finally:
        api.close()


def test_controller_chart_options_reach_the_controller():
    deployment, docs = _controller({"allowedPlugins": ["response-rewrite", "serverless-pre-function"],
                                    "tokenAudience": "my-audience"})
    env = _env(deployment)
    assert env["AMESH_CONTROLLER_ALLOWED_PLUGINS"] == "response-rewrite,serverless-pre-function"
    assert env["AMESH_CONTROLLER_TOKEN_AUDIENCES"] == "my-audience"
    deployment, docs = _controller({"insecurePlaintext": True})
    env = _env(deployment)
    assert env["AMESH_CONTROLLER_INSECURE_PLAINTEXT"] == "true" and "AMESH_CONTROLLER_TLS_CERT_FILE" not in env
    assert not {d["kind"] for d in docs} & {"Secret", "ConfigMap"}
    assert "volumes" not in deployment["spec"]["template"]["spec"]


def test_controller_chart_with_cert_manager():
    with pytest.raises(helm.HelmRenderError, match="issuerRef.name"):
        render(CONTROLLER_CHART, {"tls": {"mode": "certManager"}}, "amesh-controller")
    docs = render(CONTROLLER_CHART, {"tls": {"mode": "certManager", "certManager": {
        "issuerRef": {"name": "mesh-ca", "kind": "ClusterIssuer"}, "trustManagerBundle": True}}}, "amesh-controller")
    certificate = next(d for d in docs if d["kind"] == "Certificate")
    assert certificate["spec"]["secretName"] == "amesh-controller-tls"
    assert "amesh-controller.istio-system.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"]["name"] == "mesh-ca"
    bundle = next(d for d in docs if d["kind"] == "Bundle")
    assert bundle["metadata"]["name"] == "amesh-controller-ca"
    assert bundle["spec"]["target"]["configMap"]["key"] == "ca.crt"
    assert not {d["kind"] for d in docs} & {"Secret", "ConfigMap"}  # cert-manager and trust-manager write them
    with pytest.raises(helm.HelmRenderError, match="tls.mode"):
        render(CONTROLLER_CHART, {"tls": {"mode": "nope"}}, "amesh-controller")
