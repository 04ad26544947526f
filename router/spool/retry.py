"""When to try a failed delivery again, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

from router.config.models import RetryPolicyConfig


@dataclass(frozen=True)
class RetryPolicy:
    initial_delay: float
    max_delay: float
    multiplier: float
    jitter: float
    max_attempts: int
    max_age: float

    @classmethod
    def from_config(cls, c: RetryPolicyConfig) -> RetryPolicy:
        return cls(
            c.initial_delay_seconds, c.max_delay_seconds, c.multiplier, c.jitter, c.max_attempts, c.max_age_seconds
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Exponential (``initial_delay * multiplier**(attempt-1)``) capped at ``max_delay``,
        then spread by ``±jitter`` so that many instances do not retry in lockstep.
        """
        uniform = rng.uniform if rng is not None else random.uniform
        exponent = min(max(attempt - 1, 0), 64)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return max(0.0, base * (1.0 + self.jitter * uniform(-1.0, 1.0)))

    def give_up_reason(self, attempts: int, first_queued_at: float, now: float) -> str | None:
        """Why a delivery should stop being retried, or None to keep trying."""
        if attempts >= self.max_attempts:
            return f"gave up after {attempts} attempts"
        age = now - first_queued_at
        if age >= self.max_age:
            return f"gave up after {age:.0f} s in the queue (max_age_seconds = {self.max_age:g})"
        return None
