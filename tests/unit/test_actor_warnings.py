"""The teacher actor's warnings (and its start-up times) travel to the driver in its shard summaries (the actor's output reaches only the
log); here the handler that collects them, on the package's real logger."""

from __future__ import annotations

import logging
import threading

from tinyllm_ray.teachers.actor import SUMMARY_KEYS, ActorWarnings


def test_warnings_from_any_thread_come_back_once_each_then_are_gone():
    warnings = ActorWarnings()
    logger = logging.getLogger("tinyllm_ray")
    logger.addHandler(warnings)
    try:
        logger.info("not a warning")
        threads = [threading.Thread(target=logger.warning, args=("teacher 'a': the engine runs below its batch",))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logger.error("teacher 'a': a shard failed")
        assert warnings.take() == "teacher 'a': the engine runs below its batch\nteacher 'a': a shard failed"
        assert warnings.take() == ""
    finally:
        logger.removeHandler(warnings)
    assert "warnings" in SUMMARY_KEYS


def test_an_actors_startup_is_told_as_offsets_from_its_pools_start():
    from tinyllm_ray.generate import startup_text

    text = startup_text("a", {"process_started": 103.0, "constructor_started": 105.5, "ready": 118.0}, 100.0)
    assert text == ("teacher a: an actor was ready 18.0 s after its pool started (its process started at 3.0 s, its "
                    "constructor at 5.5 s, the teacher's imports and engine build took 12.5 s)")
    assert "startup" in SUMMARY_KEYS


def test_generation_progress_counts_rows_so_small_lead_shards_weigh_what_they_hold():
    from tinyllm_ray.generate import PoolProgress

    class Display:
        def __init__(self):
            self.updates = []

        def update(self, done: int, **facts: str) -> None:
            self.updates.append((done, facts["teachers"]))

        def close(self) -> None:
            pass

    display = Display()
    progress = PoolProgress(display, {"a": 48, "b": 48})
    for teacher, rows in (("a", 4), ("b", 4), ("a", 4), ("a", 8)):
        progress.shard_done(teacher, rows, tokens=10)
    assert display.updates[-1] == (20, "a 16/48 b 4/48")
