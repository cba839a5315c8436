"""The injection template, rendered by the real Go template engine for sample pods, and its init args parsed
by amesh-iptables' own flag parser into the capture config they mean."""

from __future__ import annotations

import ipaddress

import pytest

from init.cli import parse_flags
from init.config import CaptureConfig, Mode, build_config
from tests.delivery.injection import SamplePod, container, inject

INIT_ARGS_DEFAULT = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                     "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]


def capture_config(pod: dict, monkeypatch) -> CaptureConfig:
    # Istio's env knobs on the CI host must not leak into what the args mean.
    for name in ("ENVOY_USER", "ISTIO_META_DNS_CAPTURE", "INVALID_DROP", "ISTIO_INBOUND_PORTS",
                 "ISTIO_SERVICE_CIDR", "ISTIO_SERVICE_EXCLUDE_CIDR", "KUBE_VIRT_INTERFACES"):
        monkeypatch.delenv(name, raising=False)
    init = container(pod, "istio-init", "initContainers")
    for env in init.get("env", []):
        monkeypatch.setenv(env["name"], env["value"])
    return build_config(parse_flags(init["args"]), "1337")


def ann(name: str, value: str) -> SamplePod:
    return SamplePod(annotations={name: value})


def test_default_pod_gets_istio_default_args_and_config(monkeypatch):
    pod = inject(SamplePod())
    init = container(pod, "istio-init", "initContainers")
    assert init["args"] == INIT_ARGS_DEFAULT
    config = capture_config(pod, monkeypatch)
    assert config.mode is Mode.REDIRECT
    assert (config.proxy_port, config.inbound_capture_port) == (15001, 15006)
    assert config.proxy_uids == ("1337",) and config.proxy_gids == ("1337",)
    assert config.inbound_all and config.outbound_all
    assert config.inbound_exclude_ports == (15090, 15021, 15020)
    assert config.outbound_exclude_cidrs == () and config.outbound_ports == () and config.kubevirt_interfaces == ()


@pytest.mark.parametrize("annotation, value, check", [
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.96.0.0/12,10.244.0.0/16",
     lambda c: not c.outbound_all and c.outbound_cidrs == (ipaddress.ip_network("10.96.0.0/12"),
                                                           ipaddress.ip_network("10.244.0.0/16"))),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "",
     lambda c: not c.outbound_all and c.outbound_cidrs == ()),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "169.254.169.254/32",
     lambda c: c.outbound_all and c.outbound_exclude_cidrs == (ipaddress.ip_network("169.254.169.254/32"),)),
    ("traffic.sidecar.istio.io/includeInboundPorts", "9080,9443",
     lambda c: not c.inbound_all and c.inbound_ports == (9080, 9443)),
    ("traffic.sidecar.istio.io/includeInboundPorts", "",
     lambda c: not c.captures_inbound),
    ("traffic.sidecar.istio.io/excludeInboundPorts", "8081,15020",
     lambda c: c.inbound_exclude_ports == (15090, 15021, 8081, 15020)),
    ("traffic.sidecar.istio.io/includeOutboundPorts", "3306",
     lambda c: c.outbound_ports == (3306,)),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432,6379",
     lambda c: c.outbound_exclude_ports == (5432, 6379)),
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "net1,net2",
     lambda c: c.kubevirt_interfaces == ("net1", "net2")),
    ("traffic.sidecar.istio.io/excludeInterfaces", "eth1",
     lambda c: c.exclude_interfaces == ("eth1",)),
    ("status.sidecar.istio.io/port", "0",
     lambda c: c.inbound_exclude_ports == (15090, 15021)),
])
def test_each_annotation_reaches_the_capture_config(annotation, value, check, monkeypatch):
    baseline = capture_config(inject(SamplePod()), monkeypatch)
    assert not check(baseline), "the check must tell the annotated pod from the default one"
    config = capture_config(inject(ann(annotation, value)), monkeypatch)
    assert check(config), config


@pytest.mark.parametrize("annotation, flag", [
    ("traffic.sidecar.istio.io/includeOutboundPorts", "-q"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "-o"),
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "-k"),
    ("traffic.sidecar.istio.io/excludeInterfaces", "-c"),
])
def test_optional_flags_only_when_asked(annotation, flag):
    assert flag not in container(inject(SamplePod()), "istio-init", "initContainers")["args"]
    args = container(inject(ann(annotation, "eth7")), "istio-init", "initContainers")["args"]
    assert args[args.index(flag) + 1] == "eth7"


def test_values_set_defaults_and_annotations_win(monkeypatch):
    overrides = {"global": {"proxy": {"excludeIPRanges": "10.0.0.0/8", "includeInboundPorts": "9080"}}}
    config = capture_config(inject(SamplePod(), overrides), monkeypatch)
    assert config.outbound_exclude_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.inbound_ports == (9080,)
    pod = ann("traffic.sidecar.istio.io/excludeOutboundIPRanges", "192.168.0.0/16")
    config = capture_config(inject(pod, overrides), monkeypatch)
    assert config.outbound_exclude_cidrs == (ipaddress.ip_network("192.168.0.0/16"),)


def test_interception_mode_none_has_no_init_container():
    pod = inject(ann("sidecar.istio.io/interceptionMode", "NONE"))
    assert "initContainers" not in pod["spec"]
    assert container(pod, "istio-proxy")["name"] == "istio-proxy"


@pytest.mark.parametrize("where", ["annotation", "mesh default"])
def test_tproxy_is_refused_at_injection(where):
    """The APISIX sidecar cannot serve TPROXY yet: the injector refuses the pod, naming why (the webhook's
    error is what `kubectl apply` shows), rather than injecting a sidecar that would misroute."""
    pod, proxy_config = SamplePod(), None
    if where == "annotation":
        pod = ann("sidecar.istio.io/interceptionMode", "tproxy")
    else:
        proxy_config = {"InterceptionMode": "TPROXY"}
    with pytest.raises(Exception, match="interception mode TPROXY .* not supported by the APISIX sidecar"):
        inject(pod, proxy_config=proxy_config)


def test_mesh_default_interception_mode_from_proxy_config(monkeypatch):
    pod = inject(SamplePod(), proxy_config={"InterceptionMode": "REDIRECT"})
    assert capture_config(pod, monkeypatch).mode is Mode.REDIRECT
    env = {e["name"]: e.get("value") for e in container(pod, "istio-proxy")["env"]}
    assert env["ISTIO_META_INTERCEPTION_MODE"] == "REDIRECT"
    assert "initContainers" not in inject(SamplePod(), proxy_config={"InterceptionMode": "NONE"})["spec"]


def test_proxy_metadata_reaches_init_env(monkeypatch):
    pod = inject(SamplePod(), proxy_config={"ProxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true",
                                                              "INVALID_DROP": "true"}})
    config = capture_config(pod, monkeypatch)
    assert config.redirect_dns and config.drop_invalid


def test_least_privilege_and_no_restart_policy():
    pod = inject(SamplePod())
    init = container(pod, "istio-init", "initContainers")
    assert "restartPolicy" not in init  # Amesh's stray `restartPolicy: Always` makes it a native sidecar
    sc = init["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    proxy = container(pod, "istio-proxy")["securityContext"]
    assert proxy["capabilities"] == {"drop": ["ALL"]}
    assert (proxy["runAsUser"], proxy["runAsGroup"], proxy["runAsNonRoot"]) == (1337, 1337, True)
    assert proxy["privileged"] is False and proxy["allowPrivilegeEscalation"] is False


def test_privileged_value_applies_to_init_only():
    pod = inject(SamplePod(), {"global": {"proxy": {"privileged": True}}})
    assert container(pod, "istio-init", "initContainers")["securityContext"]["privileged"] is True
    assert container(pod, "istio-proxy")["securityContext"]["privileged"] is False


def test_sidecar_keeps_istio_name_env_volumes_probe_and_metrics():
    pod = inject(SamplePod())
    proxy = container(pod, "istio-proxy")
    env = {e["name"]: e for e in proxy["env"]}
    for name in ("POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT", "CA_ADDR", "JWT_POLICY",
                 "PILOT_CERT_PROVIDER", "PROXY_CONFIG", "ISTIO_META_CLUSTER_ID", "ISTIO_META_WORKLOAD_NAME"):
        assert name in env, name
    assert env["ISTIO_META_POD_PORTS"]["value"] == '[{"containerPort":9080,"protocol":"TCP"}]'
    assert env["ISTIO_META_APP_CONTAINERS"]["value"] == "reviews"
    assert env["CA_ADDR"]["value"] == "istiod.istio-system.svc:15012"
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    # amesh-agent reads the token and the mesh CA where pilot-agent would (sidecar_agent/run_cli.py).
    assert mounts["istio-token"] == "/var/run/secrets/tokens"
    assert mounts["istiod-ca-cert"] == "/var/run/secrets/istio"
    assert mounts["istio-podinfo"] == "/etc/istio/pod"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
    assert volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"
    probe = proxy["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/healthz/ready", 15021)
    assert {p["containerPort"] for p in proxy["ports"]} == {15020, 15021}
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"],
            annotations["prometheus.io/path"]) == ("true", "15020", "/stats/prometheus")
    assert annotations["kubectl.kubernetes.io/default-container"] == "reviews"
    # The sidecar terminates Istio mTLS: Envoy clients may use auto-mTLS towards it (Istio's own label).
    assert pod["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
    assert pod["metadata"]["labels"]["service.istio.io/canonical-name"] == "reviews"


def test_install_step_values_pick_the_images():
    overrides = {"global": {"proxy_init": {"image": "docker.io/me/amesh-iptables:dev"},
                            "proxy": {"image": "docker.io/me/amesh-sidecar:dev", "privileged": True},
                            "imagePullPolicy": "IfNotPresent", "hub": "docker.io/istio", "tag": "1.13.1"}}
    pod = inject(SamplePod(), overrides)
    init, proxy = container(pod, "istio-init", "initContainers"), container(pod, "istio-proxy")
    assert (init["image"], proxy["image"]) == ("docker.io/me/amesh-iptables:dev", "docker.io/me/amesh-sidecar:dev")
    assert init["imagePullPolicy"] == proxy["imagePullPolicy"] == "IfNotPresent"
    short = inject(SamplePod(), {"global": {"proxy": {"image": "amesh-sidecar"}, "hub": "reg.example", "tag": "v9"}})
    assert container(short, "istio-proxy")["image"] == "reg.example/amesh-sidecar:v9"
    image = inject(ann("sidecar.istio.io/proxyImage", "reg.example/other:1"))
    assert container(image, "istio-proxy")["image"] == "reg.example/other:1"


def test_cni_mode_validates_only_without_privilege(monkeypatch):
    pod = inject(SamplePod(), {"global": {"istio_cni": {"enabled": True}}})
    init = container(pod, "istio-validation", "initContainers")
    assert init["args"][-2:] == ["--run-validation", "--skip-rule-apply"]
    assert init["securityContext"]["runAsUser"] == 1337 and "add" not in init["securityContext"]["capabilities"]
    config = build_config(parse_flags(init["args"]), "1337")
    assert config.run_validation and config.skip_rule_apply


def test_resource_annotations_override_values():
    pod = inject(SamplePod(annotations={"sidecar.istio.io/proxyCPU": "50m", "sidecar.istio.io/proxyMemoryLimit": "256Mi"}))
    assert container(pod, "istio-proxy")["resources"] == {"requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}}


def test_injected_pod_is_a_valid_kubernetes_pod():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for pod in (SamplePod(), ann("sidecar.istio.io/interceptionMode", "NONE"),
                ann("traffic.sidecar.istio.io/excludeInterfaces", "eth1")):
        kubernetes_validate.validate(inject(pod), "1.30", strict=True)


def test_sidecar_gets_an_audience_bound_token_the_controller_ca_and_the_plugin_allowlist():
    pod = inject(SamplePod())
    proxy = container(pod, "istio-proxy")
    env = {e["name"]: e.get("value") for e in proxy["env"]}
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "amesh-controller")
    assert mount["readOnly"] is True
    # The agent sends the token projected for the controller's audience, not the API-server or istio-ca one.
    assert env["AMESH_CONTROLLER_TOKEN"] == f"{mount['mountPath']}/token"
    assert env["AMESH_CONTROLLER_CA"] == f"{mount['mountPath']}/ca.crt"
    assert env["AMESH_CONTROLLER_ADDRESS"] == "amesh-controller.istio-system.svc:15810"
    assert env["AMESH_ALLOWED_PLUGINS"] == "*"  # every plugin that runs no code (amesh_common.allowlist)
    assert "AMESH_CONTROLLER_INSECURE_PLAINTEXT" not in env
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "amesh-controller")
    token, ca = volume["projected"]["sources"]
    assert token["serviceAccountToken"] == {"path": "token", "expirationSeconds": 3600, "audience": "amesh-controller"}
    # The controller chart's CA ConfigMap, in the pod's namespace; optional so a pod still starts without it
    # (its plugin stream then fails, naming the missing file; readiness never waits for the controller).
    assert ca["configMap"] == {"name": "amesh-controller-ca", "optional": True,
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    # The agent reads exactly these (sidecar_agent/plugins/client.py).
    from sidecar_agent.plugins.client import StreamSecurity

    security = StreamSecurity.from_env(env)
    assert str(security.ca_file) == env["AMESH_CONTROLLER_CA"] and not security.insecure_plaintext
    assert not security.allowed.allows("serverless-pre-function") and security.allowed.allows("response-rewrite")


def test_controller_values_reach_the_sidecar():
    overrides = {"global": {"amesh": {"controller": {
        "tokenAudience": "mesh-plugins", "caConfigMap": "my-ca", "tokenExpirationSeconds": 7200,
        "allowedPlugins": ["response-rewrite", "serverless-pre-function"]}}}}
    pod = inject(SamplePod(), overrides)
    env = {e["name"]: e.get("value") for e in container(pod, "istio-proxy")["env"]}
    assert env["AMESH_ALLOWED_PLUGINS"] == "response-rewrite,serverless-pre-function"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "amesh-controller")
    token, ca = volume["projected"]["sources"]
    assert (token["serviceAccountToken"]["audience"], token["serviceAccountToken"]["expirationSeconds"]) == \
        ("mesh-plugins", 7200)
    assert ca["configMap"]["name"] == "my-ca"
    plain = inject(SamplePod(), {"global": {"amesh": {"controller": {"insecurePlaintext": True,
                                                                     "allowedPlugins": "cors,cors"}}}})
    env = {e["name"]: e.get("value") for e in container(plain, "istio-proxy")["env"]}
    assert env["AMESH_CONTROLLER_INSECURE_PLAINTEXT"] == "true" and env["AMESH_ALLOWED_PLUGINS"] == "cors,cors"


def test_the_mesh_and_controller_charts_agree_on_the_audience_and_the_ca():
    import yaml

    from tests.delivery.injection import REPO, chart_values

    controller = yaml.safe_load((REPO / "controller" / "charts" / "amesh-controller" / "values.yaml").read_text())
    mesh = chart_values()["global"]["amesh"]["controller"]
    assert mesh["tokenAudience"] == controller["tokenAudience"] == "amesh-controller"
    assert mesh["caConfigMap"] == controller["tls"]["caConfigMap"]


@pytest.mark.parametrize("ca, labels, expected", [
    (None, {}, "istio"),
    ("none", {}, "disabled"),  # no workload certificate: no mTLS termination, Envoy clients must send plaintext
    ("OFF", {}, "disabled"),
    (None, {"security.istio.io/tlsMode": "disabled"}, "disabled"),  # the pod's own label wins, as in Istio
])
def test_tls_mode_label_follows_the_workload_certificate(ca, labels, expected):
    overrides = {"global": {"caAddress": ca}} if ca else {}
    pod = inject(SamplePod(labels={"app": "reviews", **labels}), overrides)
    assert pod["metadata"]["labels"]["security.istio.io/tlsMode"] == expected
