"""What the controller must do after a change: which pods get a new plugin set, which statuses change.

`Reconciler` keeps the last-seen configs and pods and the last computed per-pod sets. Each event
recomputes only the namespace it touches (configs select pods of their own namespace only) and
returns an `Actions` value: the pods whose set differs from what they were last given — including
pods that stop matching because a selector narrowed, a label changed or a config was deleted or
became invalid (Amesh never told those) — and the status each affected config should now have.
No I/O here; the app applies the actions (gRPC pushes, status patches).

Kubernetes resourceVersions are never looked at: an event replaces what we hold, and whether anything
changed is decided by comparing content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.crd import PluginConfig
from controller.merge import Conflict, merge_for_pod
from controller.selection import Pod, PodKey, selects
from amesh_common.plugin_model import EMPTY, PluginSet

ConfigKey = tuple[str, str]


@dataclass(frozen=True)
class ConfigStatus:
    generation: int
    matched: int
    problems: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()  # described Conflicts where this config lost


@dataclass(frozen=True)
class Actions:
    pushes: Mapping[PodKey, PluginSet] = field(default_factory=dict)
    statuses: Mapping[ConfigKey, ConfigStatus] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pushes or self.statuses)


def desired(configs: Iterable[PluginConfig], pods: Iterable[Pod]) -> tuple[dict[PodKey, PluginSet],
                                                                          dict[ConfigKey, ConfigStatus]]:
    """Per-pod plugin sets (pods with no plugin left out) and every config's status (pure)."""
    configs = list(configs)
    pods = list(pods)
    sets: dict[PodKey, PluginSet] = {}
    lost: dict[ConfigKey, list[Conflict]] = {c.key: [] for c in configs}
    by_source = {c.source: c.key for c in configs}
    by_namespace: dict[str, list[PluginConfig]] = {}
    for c in configs:
        by_namespace.setdefault(c.namespace, []).append(c)
    matched = {c.key: 0 for c in configs}
    for pod in pods:
        candidates = by_namespace.get(pod.namespace, [])
        for c in candidates:
            if selects(c, pod):
                matched[c.key] += 1
        plugin_set, conflicts = merge_for_pod(pod, candidates)
        if plugin_set.plugins:
            sets[pod.key] = plugin_set
        for conflict in conflicts:
            lost[by_source[conflict.loser]].append(conflict)
    statuses = {c.key: ConfigStatus(c.generation, matched[c.key], c.problems,
                                    tuple(x.describe() for x in lost[c.key])) for c in configs}
    return sets, statuses


def changed(old: Mapping[PodKey, PluginSet], new: Mapping[PodKey, PluginSet]) -> dict[PodKey, PluginSet]:
    """Pods whose set differs, with their new set (EMPTY for pods that lost every plugin)."""
    return {key: new.get(key, EMPTY) for key in sorted(set(old) | set(new))
            if old.get(key, EMPTY).plugins != new.get(key, EMPTY).plugins}


class Reconciler:
    def __init__(self) -> None:
        self.configs: dict[ConfigKey, PluginConfig] = {}
        self.pods: dict[PodKey, Pod] = {}
        self.sets: dict[PodKey, PluginSet] = {}
        self.statuses: dict[ConfigKey, ConfigStatus] = {}

    def set_of(self, pod: PodKey) -> PluginSet:
        return self.sets.get(pod, EMPTY)

    # Events. `None` = deleted. Each returns what to do about it.
    def config(self, key: ConfigKey, config: PluginConfig | None) -> Actions:
        return self._update(key[0], configs={key: config})

    def pod(self, key: PodKey, pod: Pod | None) -> Actions:
        return self._update(key[0], pods={key: pod})

    def resync(self, configs: Iterable[PluginConfig] | None = None, pods: Iterable[Pod] | None = None) -> Actions:
        """Replace the whole config and/or pod list (after a (re)list): objects missing from it are gone."""
        namespaces: set[str] = set()
        config_changes: dict[ConfigKey, PluginConfig | None] = {}
        pod_changes: dict[PodKey, Pod | None] = {}
        if configs is not None:
            fresh = {c.key: c for c in configs}
            config_changes = {k: None for k in self.configs if k not in fresh} | fresh
        if pods is not None:
            fresh_pods = {p.key: p for p in pods}
            pod_changes = {k: None for k in self.pods if k not in fresh_pods} | fresh_pods
        namespaces = {k[0] for k in config_changes} | {k[0] for k in pod_changes}
        return self._update(*sorted(namespaces), configs=config_changes, pods=pod_changes)

    def _update(self, *namespaces: str, configs: Mapping | None = None, pods: Mapping | None = None) -> Actions:
        gone_configs = []
        for key, value in (configs or {}).items():
            if value is None:
                if self.configs.pop(key, None) is not None:
                    gone_configs.append(key)
            else:
                self.configs[key] = value
        for key, value in (pods or {}).items():
            if value is None:
                self.pods.pop(key, None)
            else:
                self.pods[key] = value
        pushes: dict[PodKey, PluginSet] = {}
        statuses: dict[ConfigKey, ConfigStatus] = {}
        for ns in set(namespaces):
            ns_configs = [c for k, c in self.configs.items() if k[0] == ns]
            ns_pods = [p for k, p in self.pods.items() if k[0] == ns]
            new_sets, new_statuses = desired(ns_configs, ns_pods)
            old_sets = {k: s for k, s in self.sets.items() if k[0] == ns}
            for key, plugin_set in changed(old_sets, new_sets).items():
                pushes[key] = plugin_set
                if plugin_set.plugins:
                    self.sets[key] = plugin_set
                else:
                    self.sets.pop(key, None)
            for key, status in new_statuses.items():
                if self.statuses.get(key) != status:
                    statuses[key] = status
                    self.statuses[key] = status
        for key in gone_configs:
            self.statuses.pop(key, None)
        return Actions(pushes, statuses)
