"""The teacher actor's warnings travel to the driver in its shard summaries (the actor's output reaches only the
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
