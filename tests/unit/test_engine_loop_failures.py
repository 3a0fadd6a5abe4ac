"""EngineLoop's failure paths, which a healthy vLLM engine cannot be made to take on demand: an engine whose step
raises must fail every waiting caller (no thread left blocked forever), and refuse later calls; an engine that
cannot be built fails the constructor. The engine here is
a minimal stand-in with vLLM's ``enqueue`` / ``llm_engine.step`` surface; the success path runs on real vLLM in
tests/integration/test_engine_loop.py."""

from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace

import pytest

from tinyllm_ray.engine_loop import EngineLoop, engine_dead


class DyingEngine:
    """Accepts requests, then raises from ``step`` once ``expected`` requests are waiting."""

    def __init__(self, expected: int):
        self.ids = itertools.count()
        self.waiting = 0
        self.expected = expected
        self.llm_engine = self

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


def test_a_dying_engine_fails_every_waiting_caller_and_later_calls():
    loop = EngineLoop(lambda: DyingEngine(expected=4))
    errors: list[BaseException] = []

    def call(prompts):
        try:
            loop.generate(prompts, params=None)
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=call, args=(["a", "b"],)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 2 and all("EngineCore" in str(e) for e in errors)
    with pytest.raises(RuntimeError, match="stopped earlier"):
        loop.generate(["c"], params=None)


def test_a_rejected_prompt_is_its_rows_error_and_the_call_still_returns():
    finished = SimpleNamespace(finished=True, request_id="0")

    class OneShot(DyingEngine):
        def step(self):
            self.waiting = 0
            return [finished]

    loop = EngineLoop(lambda: OneShot(expected=99))
    results = loop.generate(["fine", "reject me"], params=None)
    assert results[0] is finished
    assert isinstance(results[1], ValueError) and not engine_dead(results[1])


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

    loop = EngineLoop(Recording)
    assert loop.generate(["fine"], params=None) == [finished]
    assert loop.llm.threads["built"] == loop.llm.threads["stepped"] != threading.get_ident()


def test_an_engine_that_cannot_be_built_fails_the_constructor():
    def broken():
        raise ValueError("kv_cache_memory_bytes is too small")

    with pytest.raises(ValueError, match="too small"):
        EngineLoop(broken)
