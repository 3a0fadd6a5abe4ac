"""Retry, backoff and rate-limit policy of HTTP teachers: pure functions over plain values."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from tinyllm_ray.teachers.request_policy import (
    RequestSpacing, RetryPolicy, fatal_status, parse_retry_after, per_actor_rate, redact, retry_delay,
    retryable_status,
)


def test_retry_after_in_seconds_or_as_a_date():
    now = 1_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 2.5 ", now) == 2.5
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0  # a date passed: go now
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None


def test_a_retry_after_is_honoured_even_beyond_the_backoff_ceiling():
    policy = RetryPolicy(max_retries=3, initial_s=1.0, max_s=4.0)
    assert retry_delay(policy, 0, 9.0, random.Random(0)) == 9.0


def test_backoff_doubles_with_jitter_up_to_its_ceiling():
    policy = RetryPolicy(max_retries=10, initial_s=1.0, max_s=5.0)
    rng = random.Random(0)
    for retry, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (9, 5.0)]:
        delays = [retry_delay(policy, retry, None, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered: actors refused together do not return together


def test_statuses():
    assert all(retryable_status(s) for s in (429, 500, 502, 503, 504, 408))
    assert not any(retryable_status(s) for s in (200, 400, 401, 404, 422))
    assert all(fatal_status(s) for s in (401, 403, 404))
    assert not any(fatal_status(s) for s in (400, 429, 500))
    assert RetryPolicy(2, 0.1, 1.0).attempts == 3


def test_spacing_books_evenly_spaced_starts():
    spacing = RequestSpacing(per_second=4)
    assert [spacing.reserve(now=10.0) for _ in range(3)] == [0.0, 0.25, 0.5]
    assert spacing.reserve(now=20.0) == 0.0  # idle since: no debt carried over, no burst allowed either
    assert spacing.reserve(now=20.0) == 0.25
    with pytest.raises(ValueError):
        RequestSpacing(0)


def test_each_actor_takes_its_share_of_the_teacher_rate():
    assert per_actor_rate(10.0, 4) == 2.5
    assert per_actor_rate(None, 4) is None


def test_redact_masks_the_key():
    assert redact("Bearer sk-123 refused", "sk-123") == "Bearer *** refused"
    assert redact("no key here", None) == "no key here"
