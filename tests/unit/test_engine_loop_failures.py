"""EngineLoop's failure paths, which a healthy vLLM engine cannot be made to take on demand: an engine whose step
raises must fail every waiting caller (no thread left blocked forever), and refuse later calls; so must an engine
that dies while requests are added, and a failure in the loop itself; an engine that cannot be built fails the
constructor; a loop that ends, closed or failed, shuts its engine down once. The engine here is a minimal stand-in
with vLLM's ``enqueue`` / ``llm_engine.step`` / ``llm_engine.engine_core.shutdown`` surface; the success path runs
on real vLLM in tests/integration/test_engine_loop.py, real shutdowns in tests/integration/test_engine_shutdown.py."""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace

import pytest

from tinyllm_ray.teachers.engine_loop import EngineLoop


class EngineDead(RuntimeError):
    """Stands in for vLLM's EngineDeadError (importing vLLM takes seconds; the real loop passes that class)."""


FATAL = (EngineDead,)


class DyingEngine:
    """Accepts requests, then raises from ``step`` once ``expected`` requests are waiting."""

    def __init__(self, expected: int):
        self.ids = itertools.count()
        self.waiting = 0
        self.expected = expected
        self.llm_engine = self.engine_core = self
        self.shutdowns: list[int] = []  # the threads that shut it down

    def enqueue(self, prompts, params, use_tqdm=False):
        if prompts[0] == "reject me":
            raise ValueError("prompt rejected")
        self.waiting += 1
        return [f"{next(self.ids)}-abcdef12"]

    def has_unfinished_requests(self):
        return self.waiting > 0

    def step(self):
        if self.waiting >= self.expected:
            raise RuntimeError("EngineCore encountered an issue")
        return []

    def shutdown(self):
        self.shutdowns.append(threading.get_ident())


def shut_down_once_by_the_loop(loop: EngineLoop, engine: DyingEngine) -> bool:
    loop._thread.join(timeout=30)
    return not loop._thread.is_alive() and engine.shutdowns == [loop._thread.ident]


def call_from_threads(loop: EngineLoop, calls: list[list[str]]) -> list[BaseException]:
    """Run each call in its own thread; every thread must come back (none left blocked); returns their errors."""
    errors: list[BaseException] = []

    def call(prompts):
        try:
            loop.generate(prompts, params=None)
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=call, args=(prompts,)) for prompts in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_a_dying_engine_fails_every_waiting_caller_and_later_calls():
    engine = DyingEngine(expected=4)
    loop = EngineLoop(lambda: engine, fatal=FATAL)

    errors = call_from_threads(loop, [["a", "b"], ["c", "d"]])
    assert len(errors) == 2 and all("EngineCore" in str(e) for e in errors)
    with pytest.raises(RuntimeError, match="stopped earlier"):
        loop.generate(["c"], params=None)
    assert shut_down_once_by_the_loop(loop, engine)  # its processes must not outlive the failure
    loop.close()
    assert len(engine.shutdowns) == 1


def test_a_rejected_prompt_is_its_rows_error_and_the_call_still_returns():
    finished = SimpleNamespace(finished=True, request_id="0")

    class OneShot(DyingEngine):
        def step(self):
            self.waiting = 0
            return [finished]

    loop = EngineLoop(lambda: OneShot(expected=99), fatal=FATAL)
    results = loop.generate(["fine", "reject me"], params=None)
    assert results[0] is finished
    assert isinstance(results[1], ValueError)


def test_the_engine_is_built_and_stepped_in_the_same_thread():
    """One thread runs all of the engine's PyTorch work, so CPU teachers keep a single OpenMP worker pool."""
    finished = SimpleNamespace(finished=True, request_id="0")

    class Recording(DyingEngine):
        def __init__(self):
            super().__init__(expected=99)
            self.threads = {"built": threading.get_ident()}

        def step(self):
            self.threads["stepped"] = threading.get_ident()
            self.waiting = 0
            return [finished]

    loop = EngineLoop(Recording, fatal=FATAL)
    assert loop.generate(["fine"], params=None) == [finished]
    assert loop.llm.threads["built"] == loop.llm.threads["stepped"] != threading.get_ident()


def test_an_engine_that_cannot_be_built_fails_the_constructor():
    def broken():
        raise ValueError("kv_cache_memory_bytes is too small")

    with pytest.raises(ValueError, match="too small"):
        EngineLoop(broken, fatal=FATAL)


def test_an_engine_that_dies_while_requests_are_added_fails_every_caller():
    """vLLM's fatal error from ``enqueue`` is the whole engine's, not the prompt's."""

    class DiesOnThird(DyingEngine):
        def enqueue(self, prompts, params, use_tqdm=False):
            if self.waiting == 2:
                raise EngineDead("EngineCore encountered an issue")
            return super().enqueue(prompts, params, use_tqdm)

    engine = DiesOnThird(expected=99)
    loop = EngineLoop(lambda: engine, fatal=FATAL)
    errors = call_from_threads(loop, [["a", "b", "c"]])
    assert len(errors) == 1 and isinstance(errors[0], EngineDead)
    with pytest.raises(RuntimeError, match="stopped earlier"):
        loop.generate(["d"], params=None)
    assert shut_down_once_by_the_loop(loop, engine)


def test_a_failure_outside_the_engine_calls_fails_every_pending_and_later_call():
    """An output for a request the loop never sent (a bug on either side) breaks the loop's own bookkeeping: the
    callers must learn of it instead of waiting forever."""

    class Stranger(DyingEngine):
        def step(self):
            return [SimpleNamespace(finished=True, request_id="999")]

    engine = Stranger(expected=99)
    loop = EngineLoop(lambda: engine, fatal=FATAL)
    errors = call_from_threads(loop, [["a"], ["b", "c"]])
    # a call that arrives after the loop stopped is refused with the loop's error as its cause
    assert len(errors) == 2 and all(isinstance(e, KeyError) or isinstance(e.__cause__, KeyError) for e in errors)
    with pytest.raises(RuntimeError, match="stopped earlier"):
        loop.generate(["d"], params=None)
    assert shut_down_once_by_the_loop(loop, engine)


def test_a_closed_loop_shuts_its_engine_down_and_refuses_calls():
    engine = DyingEngine(expected=99)
    loop = EngineLoop(lambda: engine, fatal=FATAL)
    loop.close()  # returns once the loop's thread has shut the engine down
    assert not loop._thread.is_alive() and loop.llm is None and engine.shutdowns == [loop._thread.ident]
    with pytest.raises(RuntimeError, match="stopped earlier"):
        loop.generate(["a"], params=None)
    loop.close()
    assert len(engine.shutdowns) == 1


def test_a_loop_stuck_in_a_step_is_shut_down_by_close_after_its_timeout():
    """An actor exiting while its engine hangs in a step still shuts the engine down before it goes."""
    release = threading.Event()

    class Hanging(DyingEngine):
        def step(self):
            release.wait(30)
            return []

    engine = Hanging(expected=99)
    loop = EngineLoop(lambda: engine, fatal=FATAL)
    errors: list[BaseException] = []
    caller = threading.Thread(target=lambda: errors.extend(call_from_threads(loop, [["a"]])))
    caller.start()
    while not engine.waiting:
        time.sleep(0.01)
    loop.close(timeout=0.2)
    assert engine.shutdowns == [threading.get_ident()]  # by close, in the closing thread
    release.set()
    caller.join(timeout=30)
    loop._thread.join(timeout=30)
    assert not loop._thread.is_alive() and len(engine.shutdowns) == 1  # the loop, ending, does not do it again
    assert len(errors) == 1 and "closed" in str(errors[0])


def test_a_failing_shutdown_is_logged_and_the_loop_still_ends(caplog):
    def refuse(engine):
        raise OSError("engine process already gone")

    loop = EngineLoop(lambda: DyingEngine(expected=99), fatal=FATAL, shutdown=refuse)
    with caplog.at_level("ERROR", logger="tinyllm_ray"):
        loop.close()
    assert not loop._thread.is_alive() and "shutting the vLLM engine down failed" in caplog.text
