"""When an HTTP teacher retries a request, how long it waits, and how it spaces requests under a rate limit.
Pure logic over plain values (no clock, no network): the glue in :mod:`tinyllm_ray.teachers.openai_api` asks it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})  # plus every 5xx: the server may answer next time
FATAL_STATUSES = frozenset({401, 403, 404})  # bad key, no access, wrong URL or model: every request would fail


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; waits grow ``initial_s * 2**retry`` up to ``max_s``."""

    max_retries: int
    initial_s: float
    max_s: float

    @property
    def attempts(self) -> int:
        return self.max_retries + 1


def retryable_status(status: int) -> bool:
    """A status worth asking again for: rate limited, overloaded or a server fault (not a refused request)."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def fatal_status(status: int) -> bool:
    """A status that says the endpoint refuses every call of this teacher, not just this row's."""
    return status in FATAL_STATUSES


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date, RFC 9110), None if absent or
    unreadable. ``now``: the current Unix time, for dates."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def retry_delay(policy: RetryPolicy, retry: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry number ``retry`` (0 for the first): the server's Retry-After when it gave one (it knows
    when it can take us again), else exponential backoff with full jitter, so that actors refused together do not
    come back together."""
    if retry_after is not None:
        return retry_after
    ceiling = min(policy.max_s, policy.initial_s * 2 ** retry)
    return rng.uniform(ceiling / 2, ceiling)


class RequestSpacing:
    """A rate limit as evenly spaced start times: at most ``per_second`` requests start in any second, with no
    burst. Not thread-safe: one event loop owns it."""

    def __init__(self, per_second: float):
        if per_second <= 0:
            raise ValueError(f"a request rate must be > 0, got {per_second}")
        self.interval = 1.0 / per_second
        self._next = float("-inf")

    def reserve(self, now: float) -> float:
        """Book the next start time; returns how long to wait from ``now`` until it (0: go now)."""
        start = max(now, self._next)
        self._next = start + self.interval
        return start - now


def per_actor_rate(teacher_rate: float | None, actors: int) -> float | None:
    """Each actor's share of the teacher's rate limit (they do not talk to each other)."""
    return None if teacher_rate is None else teacher_rate / max(actors, 1)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked: an error message never carries the API key."""
    return text.replace(secret, "***") if secret else text
