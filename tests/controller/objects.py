"""Literal Kubernetes objects for the controller tests."""

from __future__ import annotations


def ampc(name, plugins, namespace="default", selector=None, created="2026-01-01T00:00:00Z", generation=1,
         uid=None):
    spec = {"plugins": plugins}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "apisix.apache.org/v1alpha1", "kind": "AmeshPluginConfig",
            "metadata": {"namespace": namespace, "name": name, "uid": uid or f"uid-{namespace}-{name}",
                         "generation": generation, "creationTimestamp": created},
            "spec": spec}


def pod(name, labels=None, namespace="default", phase="Running"):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "labels": labels or {}},
            "status": {"phase": phase}}


def rewrite(header="X-Mesh", value="1", **extra):
    return {"name": "response-rewrite", "config": {"headers": {"set": {header: value}}}, **extra}
