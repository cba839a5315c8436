"""Exponential backoff with jitter (pure: the caller passes the random draw)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid backoff {self}")

    def delay(self, attempt: int, draw: float) -> float:
        """Delay before retry number `attempt` (0-based), `draw` uniform in [0, 1).

        The random part keeps a fleet of sidecars from reconnecting to a restarted istiod in lockstep.
        """
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1 - self.jitter) + base * self.jitter * draw
