"""Pods as values, and which pods an AmeshPluginConfig selects (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.crd import PluginConfig

PodKey = tuple[str, str]  # (namespace, name)
FINISHED = ("Succeeded", "Failed")  # no sidecar runs in them any more


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    uid: str = ""

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def pod_from(obj: Mapping) -> Pod | None:
    """The Pod value of a Kubernetes Pod object; None for a finished pod or one without identity."""
    meta = obj.get("metadata") or {}
    if not meta.get("namespace") or not meta.get("name"):
        return None
    if (obj.get("status") or {}).get("phase") in FINISHED:
        return None
    labels = meta.get("labels") or {}
    return Pod(meta["namespace"], meta["name"], tuple(sorted((str(k), str(v)) for k, v in labels.items())),
               str(meta.get("uid", "")))


def selects(config: PluginConfig, pod: Pod) -> bool:
    """A config applies to the pods of its own namespace that its selector matches."""
    return pod.namespace == config.namespace and config.selector.matches(pod.label_map)


def selected(config: PluginConfig, pods: Iterable[Pod]) -> frozenset[PodKey]:
    return frozenset(p.key for p in pods if selects(config, p))
