"""How much a vLLM teacher actor keeps in flight (teachers/feeding.py): under ``shards_in_flight: auto`` the pool
offers each actor enough shards for vLLM's largest default batch and the gate admits what the started engine
schedules; a fixed number that cannot fill the engine is warned about. The real engine's side runs in
tests/integration/test_engine_shutdown.py."""

from __future__ import annotations

import threading
import time

import pytest

from tinyllm_ray.config import TeacherConfig
from tinyllm_ray.teacher_config import ResourceConfig
from tinyllm_ray.teachers.feeding import (LARGEST_DEFAULT_MAX_NUM_SEQS, SequenceGate, concurrent_shards,
                                          sequences_to_admit, underfed_warning)


def test_auto_offers_enough_shards_for_the_largest_default_batch_or_the_jobs_own():
    auto = ResourceConfig(shard_size=64, shards_in_flight="auto")
    assert concurrent_shards(auto, {}) == LARGEST_DEFAULT_MAX_NUM_SEQS // 64 == 16
    assert concurrent_shards(auto, {"max_num_seqs": 100}) == 2  # ceil(100 / 64)
    assert concurrent_shards(ResourceConfig(shard_size=64, shards_in_flight=4), {}) == 4


def test_auto_admits_what_the_engine_schedules_and_a_number_admits_all():
    assert sequences_to_admit(ResourceConfig(shards_in_flight="auto"), 1024) == 1024
    assert sequences_to_admit(ResourceConfig(shards_in_flight="auto"), 7) == 7
    assert sequences_to_admit(ResourceConfig(shards_in_flight=3), 1024) is None


def test_the_jobs_256_in_flight_underfeed_a_large_cards_engine():
    jobs = ResourceConfig(shard_size=64, shards_in_flight=4)  # jobs/*.yaml
    warning = underfed_warning("llama", jobs, {}, max_num_seqs=1024)
    assert "1024" in warning and "256 in flight" in warning and "shards_in_flight: auto (or 16)" in warning
    assert underfed_warning("llama", jobs, {}, max_num_seqs=256) is None  # a 24 GB card: exactly full
    assert underfed_warning("llama", ResourceConfig(shard_size=64, shards_in_flight="auto"), {}, 1024) is None


def test_auto_warns_when_the_engine_schedules_more_than_its_default():
    auto = ResourceConfig(shard_size=64, shards_in_flight="auto")
    warning = underfed_warning("llama", auto, {}, max_num_seqs=2048)  # e.g. vLLM's throughput mode doubles it
    assert "engine.extra.max_num_seqs: 2048" in warning
    assert underfed_warning("llama", auto, {"max_num_seqs": 2048}, max_num_seqs=2048) is None


def test_shards_in_flight_takes_a_positive_number_or_auto():
    assert TeacherConfig.model_validate(
        {"name": "t", "model": "m", "resources": {"shards_in_flight": "auto"}}).resources.shards_in_flight == "auto"
    for bad in (0, "many"):
        with pytest.raises(ValueError, match="shards_in_flight"):
            TeacherConfig.model_validate({"name": "t", "model": "m", "resources": {"shards_in_flight": bad}})


def admitted_peak(gate: SequenceGate, batches: list[int], full_at: int) -> int:
    """Admit each batch from its own thread, holding it until the gate has once held ``full_at`` sequences (so the
    overlap does not depend on how the threads are scheduled; 10 s at most); returns the gate's peak in flight."""
    def hold(size: int) -> None:
        with gate.admit(size):
            deadline = time.monotonic() + 10
            while gate.peak < full_at and time.monotonic() < deadline:
                time.sleep(0.005)

    threads = [threading.Thread(target=hold, args=(size,)) for size in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and gate.in_flight == 0
    return gate.peak


def test_the_gate_keeps_its_limit_full_and_at_most_one_batch_over():
    assert admitted_peak(SequenceGate(4), [2] * 6, full_at=4) == 4
    assert 5 <= admitted_peak(SequenceGate(5), [2] * 6, full_at=5) <= 6  # admitted whole: below 5 plus one batch
    assert admitted_peak(SequenceGate(None), [2] * 6, full_at=12) == 12
    assert admitted_peak(SequenceGate(1), [3, 3], full_at=3) == 3  # a batch larger than the limit still runs, alone
