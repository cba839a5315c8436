"""The status subresource of an AmeshPluginConfig (pure): conditions plus the number of matched pods.

    status:
      observedGeneration: 3
      matchedPods: 2
      conditions:                      # metav1.Condition
        - {type: Ready, status: "True"|"False", reason: Accepted|Invalid, message, observedGeneration, lastTransitionTime}
        - {type: Conflicted, status: "True"|"False", reason: Overridden|NoConflict, message, ...}

`lastTransitionTime` changes only when a condition's status flips; `needs_patch` ignores it, so writing
the status (which the watch reports back as a change) does not loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.reconcile import ConfigStatus

MAX_MESSAGE = 32768  # metav1.Condition.message limit
MAX_LISTED = 20


def _message(items: tuple[str, ...], total_label: str) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f"; … and {len(items) - MAX_LISTED} more {total_label}"
    return shown[:MAX_MESSAGE]


def conditions(status: ConfigStatus) -> list[dict]:
    if status.problems:
        ready = {"type": "Ready", "status": "False", "reason": "Invalid",
                 "message": "not delivered to any sidecar: " + _message(status.problems, "problems")}
    else:
        ready = {"type": "Ready", "status": "True", "reason": "Accepted",
                 "message": f"delivered to {status.matched} matched pod(s)"}
    if status.conflicts:
        conflicted = {"type": "Conflicted", "status": "True", "reason": "Overridden",
                      "message": "older configs take precedence: " + _message(status.conflicts, "conflicts")}
    else:
        conflicted = {"type": "Conflicted", "status": "False", "reason": "NoConflict", "message": ""}
    return [{**c, "observedGeneration": status.generation} for c in (ready, conflicted)]


def status_body(status: ConfigStatus, previous: Mapping | None, now: str) -> dict:
    """The new `status` object; `previous` is the object's current status (for transition times)."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or [] if isinstance(c, Mapping)}
    out = []
    for cond in conditions(status):
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        out.append({**cond, "lastTransitionTime": old["lastTransitionTime"] if same else now})
    return {"observedGeneration": status.generation, "matchedPods": status.matched, "conditions": out}


def _comparable(status: Mapping | None) -> object:
    if not status:
        return None
    conds = sorted(({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []),
                   key=lambda c: str(c.get("type")))
    return (status.get("observedGeneration"), status.get("matchedPods"), conds)


def needs_patch(current: Mapping | None, body: Mapping) -> bool:
    return _comparable(current) != _comparable(body)
