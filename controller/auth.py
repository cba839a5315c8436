"""Who may subscribe to a pod's plugins: only that pod, proven by its service-account token.

The agent sends the pod's projected service-account token. The API server's TokenReview tells us the
token is valid and, for a bound (projected) token, which pod it was issued to: the extra claims
`authentication.kubernetes.io/pod-name` (and `pod-uid`), and the username
`system:serviceaccount:<namespace>:<sa>`. Both the namespace and the pod name must equal the subscribed
pod. A legacy secret-based token carries no pod claim and is refused: it would let every pod of a
service account read its siblings' plugins.

Accepted reviews are cached for `ttl` seconds by (token digest, pod), so a reconnect storm after a
controller restart does not turn into a TokenReview storm.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping

from controller.selection import PodKey

POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
SA_PREFIX = "system:serviceaccount:"


class Refused(Exception):
    """The subscription is not allowed; the message says why (sent to the agent)."""


def check_review(status: Mapping, pod: PodKey) -> str | None:
    """None if this TokenReview status proves the caller is `pod`, else the reason it does not."""
    if status.get("error"):
        return f"token review failed: {status['error']}"
    if not status.get("authenticated"):
        return "token not authenticated"
    user = status.get("user") or {}
    username = str(user.get("username", ""))
    if not username.startswith(SA_PREFIX) or username.count(":") != 3:
        return f"{username!r} is not a service account"
    namespace = username.split(":")[2]
    if namespace != pod[0]:
        return f"token of namespace {namespace!r} cannot subscribe for pod {pod[0]}/{pod[1]}"
    names = (user.get("extra") or {}).get(POD_NAME_CLAIM) or []
    if not names:
        return "token has no pod-name claim (use the pod's projected service-account token)"
    if list(names) != [pod[1]]:
        return f"token of pod {pod[0]}/{names[0]} cannot subscribe for pod {pod[0]}/{pod[1]}"
    return None


class TokenReviewAuthenticator:
    def __init__(self, review: Callable[[str], Mapping], ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.review = review  # blocking: token -> TokenReview status (kube.Kube.token_review)
        self.ttl = ttl
        self.clock = clock
        self._accepted: dict[tuple[str, PodKey], float] = {}

    async def __call__(self, token: str | None, pod: PodKey) -> None:
        """Returns if `token` proves `pod`; raises `Refused` otherwise."""
        if not token:
            raise Refused("no service-account token (metadata 'authorization: Bearer <token>')")
        key = (hashlib.sha256(token.encode()).hexdigest(), pod)
        now = self.clock()
        if self._accepted.get(key, 0) > now:
            return
        try:
            status = await asyncio.to_thread(self.review, token)
        except Exception as exc:  # API server unreachable: fail closed
            raise Refused(f"token review unavailable: {exc}") from None
        reason = check_review(status, pod)
        if reason:
            raise Refused(reason)
        if len(self._accepted) > 10_000:
            self._accepted = {k: v for k, v in self._accepted.items() if v > now}
        self._accepted[key] = now + self.ttl
