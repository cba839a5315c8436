"""Who may subscribe to a pod's plugins: only that pod, proven by its service-account token.

The agent sends the pod's projected service-account token. The API server's TokenReview tells us the
token is valid and, for a bound (projected) token, which pod it was issued to: the extra claims
`authentication.kubernetes.io/pod-name` (and `pod-uid`), and the username
`system:serviceaccount:<namespace>:<sa>`. Both the namespace and the pod name must equal the subscribed
pod. A legacy secret-based token carries no pod claim and is refused: it would let every pod of a
service account read its siblings' plugins.

The review asks for the controller's audience (`--token-audience`, default `amesh-controller`): the
injection template projects a token for exactly that audience, so the token a sidecar sends here is
good for nothing else (not the API server, not istiod), and an API-server token stolen elsewhere is
refused here. When audiences were asked for, the review's `status.audiences` must name one of them.

Accepted reviews are cached for `ttl` seconds by (token digest, pod), so a reconnect storm after a
controller restart does not turn into a TokenReview storm. A stream re-checks its token (`fresh=True`,
past the cache) on a timer and at the token's `exp`, and is ended when the review fails (stream.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Mapping

from controller.selection import PodKey

POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
SA_PREFIX = "system:serviceaccount:"


class Refused(Exception):
    """The subscription is not allowed; the message says why (sent to the agent)."""


def check_review(status: Mapping, pod: PodKey, audiences: tuple[str, ...] = ()) -> str | None:
    """None if this TokenReview status proves the caller is `pod`, else the reason it does not."""
    if status.get("error"):
        return f"token review failed: {status['error']}"
    if not status.get("authenticated"):
        return "token not authenticated" + (f" for audience {', '.join(audiences)}" if audiences else "")
    if audiences and not set(status.get("audiences") or ()) & set(audiences):
        return f"token is not for audience {', '.join(audiences)} (it is for {status.get('audiences') or 'none'})"
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


def token_expiry(token: str) -> float | None:
    """The `exp` claim (Unix seconds) of a JWT, read without verifying it (the TokenReview verifies); None if
    the token is no JWT or has no numeric exp. Used only to re-check the token when it expires."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class TokenReviewAuthenticator:
    def __init__(self, review: Callable[[str], Mapping], ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, audiences: tuple[str, ...] = ()) -> None:
        self.review = review  # blocking: token -> TokenReview status (kube.Kube.token_review)
        self.ttl = ttl
        self.clock = clock
        self.audiences = tuple(audiences)  # what `review` asks for; the status must name one of them
        self._accepted: dict[tuple[str, PodKey], float] = {}

    async def __call__(self, token: str | None, pod: PodKey, fresh: bool = False) -> None:
        """Returns if `token` proves `pod`; raises `Refused` otherwise. `fresh`: ask the API server even
        if an accepted review is cached (the periodic re-check of an open stream)."""
        if not token:
            raise Refused("no service-account token (metadata 'authorization: Bearer <token>')")
        key = (hashlib.sha256(token.encode()).hexdigest(), pod)
        now = self.clock()
        if not fresh and self._accepted.get(key, 0) > now:
            return
        try:
            status = await asyncio.to_thread(self.review, token)
        except Exception as exc:  # API server unreachable: fail closed
            self._accepted.pop(key, None)
            raise Refused(f"token review unavailable: {exc}") from None
        reason = check_review(status, pod, self.audiences)
        if reason:
            self._accepted.pop(key, None)
            raise Refused(reason)
        if len(self._accepted) > 10_000:
            self._accepted = {k: v for k, v in self._accepted.items() if v > now}
        until = now + self.ttl
        exp = token_expiry(token)
        if exp is not None:  # never trust a cached review past the token's own expiry
            until = min(until, now + (exp - time.time()))
        self._accepted[key] = until
