"""How a Coordinator paces and bounds its work: :class:`CoordinatorConfig` and the
:class:`RetryPolicy` it holds (frozen records, checked when they are made)."""

from __future__ import annotations

import random
from typing import Any

import attrs

from release_coordinator.errors import ConfigurationError

__all__ = ["CoordinatorConfig", "RetryPolicy"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} must not be negative, not {value!r}")


@attrs.frozen
class RetryPolicy:
    """Retries of transient trouble (connection refused, time-out, 502/504).

    ``attempts`` counts every try (1 means no retry). The n-th retry waits
    ``min(max_delay, base_delay * 2 ** (n - 1))``, of which the fraction ``jitter`` is drawn at
    random, so that many coordinators do not retry in step. Real answers (400, 404, 500, 503)
    are never retried.
    """

    attempts: int = attrs.field(default=4, validator=_positive)
    base_delay: float = attrs.field(default=0.2, validator=_not_negative)
    max_delay: float = attrs.field(default=5.0, validator=_not_negative)
    jitter: float = attrs.field(default=0.5)

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within 0..1, not {self.jitter!r}")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return float(ceiling * (1 - self.jitter) + rng.uniform(0, ceiling * self.jitter))


@attrs.frozen
class CoordinatorConfig:
    """How a :class:`Coordinator` paces and bounds its work (seconds throughout).

    - ``poll_interval``: between two ``get_status`` rounds while tasks stage or publish;
    - ``phase_timeout``: a task the coordinator waits on that shows no progress (no new state,
      no new progress figure) for this long fails, and with it the release;
    - ``release_timeout``: a release that stays in one active state (initializing, running,
      publishing, canceling) for this long fails; ``staged`` waits for a publish request
      without limit;
    - ``health_interval``: between two health-check rounds (``0`` turns them off);
      ``health_threshold`` consecutive failures report a service ``down``;
    - ``lease_seconds``: how long a claim on a release lasts without renewal (several
      coordinators over one store); ``claim_interval``: how often unowned releases are looked for.
    """

    poll_interval: float = attrs.field(default=5.0, validator=_not_negative)
    retry: RetryPolicy = RetryPolicy()
    phase_timeout: float = attrs.field(default=3600.0, validator=_positive)
    release_timeout: float = attrs.field(default=6 * 3600.0, validator=_positive)
    health_interval: float = attrs.field(default=60.0, validator=_not_negative)
    health_threshold: int = attrs.field(default=3, validator=_positive)
    lease_seconds: float = attrs.field(default=30.0, validator=_positive)
    claim_interval: float = attrs.field(default=5.0, validator=_positive)
