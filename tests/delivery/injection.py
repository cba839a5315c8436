"""Render the Amesh injection template with Helm's real Go template engine, as istiod would for a pod.

istiod executes the template with a SidecarTemplateData (ObjectMeta, Spec, ProxyConfig, MeshConfig, Values,
...). Here the same text is put in a throw-away chart beside a one-line template that executes it with that
data taken from the values, so the Go text/template + sprig engine of helm-python-sdk renders it. Go field
names (Containers, Name, Ports) stand in for istiod's structs; `.Values` is the chart's merged values, which
is what istiod's injector ConfigMap carries.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "amesh"

_HARNESS_CHART = "apiVersion: v2\nname: injection-harness\nversion: 0.0.1\n"
_HARNESS_POD = '{{ template "amesh.patch" .Values.injectionData }}\n'


def injection_template_text(values: dict | None = None) -> str:
    values = values or yaml.safe_load((CHART / "values.yaml").read_text())
    return values["istiod"]["sidecarInjectorWebhook"]["templates"]["amesh"]


@dataclass(frozen=True)
class SamplePod:
    name: str = "reviews-v1-5d8f7c9b4-abcde"
    namespace: str = "default"
    labels: dict = field(default_factory=lambda: {"app": "reviews", "version": "v1"})
    annotations: dict = field(default_factory=dict)
    containers: tuple = ({"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.16.2",
                          "ports": [{"containerPort": 9080, "protocol": "TCP"}]},)
    deployment: str = "reviews-v1"
    service_account: str = "bookinfo-reviews"

    def manifest(self) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels),
                             "annotations": dict(self.annotations)},
                "spec": {"serviceAccountName": self.service_account,
                         "containers": copy.deepcopy(list(self.containers))}}


def template_data(pod: SamplePod, values: dict, proxy_config: dict | None = None) -> dict:
    """istiod's SidecarTemplateData for this pod, with Go's field names."""
    containers = [{"Name": c["name"], "Image": c.get("image", ""), "Ports": c.get("ports", [])}
                  for c in pod.containers]
    return {
        "TypeMeta": {"APIVersion": "apps/v1", "Kind": "Deployment"},
        "DeploymentMeta": {"Name": pod.deployment, "Namespace": pod.namespace},
        "ObjectMeta": {"Name": pod.name, "Namespace": pod.namespace, "Labels": dict(pod.labels),
                       "Annotations": dict(pod.annotations)},
        "Spec": {"Containers": containers, "ServiceAccountName": pod.service_account},
        "ProxyConfig": {"DiscoveryAddress": "istiod.istio-system.svc:15012", "InterceptionMode": "REDIRECT",
                        "ProxyMetadata": {}, **(proxy_config or {})},
        "MeshConfig": {"TrustDomain": "cluster.local"},
        "Values": values,
        "Revision": "",
        "EstimatedConcurrency": 0,
    }


def chart_values(overrides: dict | None = None) -> dict:
    """The amesh chart's values merged with overrides, exactly as Helm coalesces them."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(overrides or {})


def render_patch(pod: SamplePod, overrides: dict | None = None, proxy_config: dict | None = None) -> dict:
    """The pod patch the template produces (what istiod merges into the pod)."""
    import helm_python as helm

    values = chart_values(overrides)
    # istiod renders with the istiod subchart's view of the values: the globals plus istiod's own keys.
    istiod_values = {**values.get("istiod", {}), "global": values["global"]}
    with tempfile.TemporaryDirectory(prefix="amesh-inject-") as tmp:
        root = Path(tmp) / "injection-harness"
        (root / "templates").mkdir(parents=True)
        (root / "Chart.yaml").write_text(_HARNESS_CHART)
        (root / "templates" / "_amesh_injection.tpl").write_text(injection_template_text(values))
        (root / "templates" / "pod.yaml").write_text(_HARNESS_POD)
        with helm.Chart.load(root) as chart:
            out = chart.render({"injectionData": template_data(pod, istiod_values, proxy_config)},
                               name="inject", namespace=pod.namespace)
    text = out["injection-harness/templates/pod.yaml"]
    assert "<no value>" not in text, text
    return yaml.safe_load(text)


def _merge_named(base: list, extra: list) -> list:
    merged = {item["name"]: item for item in base}
    for item in extra:
        merged[item["name"]] = {**merged.get(item["name"], {}), **item}
    return list(merged.values())


def inject(pod: SamplePod, overrides: dict | None = None, proxy_config: dict | None = None) -> dict:
    """The injected pod: the patch merged into the pod the way istiod's strategic merge does for these keys."""
    patch = render_patch(pod, overrides, proxy_config)
    out = pod.manifest()
    meta, spec = out["metadata"], out["spec"]
    for key in ("labels", "annotations"):
        meta[key] = {**meta.get(key, {}), **(patch.get("metadata", {}).get(key) or {})}
    pspec = patch.get("spec", {})
    for key in ("initContainers", "containers", "volumes"):
        if pspec.get(key):
            spec[key] = _merge_named(spec.get(key, []), pspec[key])
    return out


def container(pod: dict, name: str, kind: str = "containers") -> dict:
    matches = [c for c in pod["spec"].get(kind, []) if c["name"] == name]
    assert len(matches) == 1, f"{kind} named {name}: {matches}"
    return matches[0]
