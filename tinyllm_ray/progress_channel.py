"""Progress from Ray workers to the driver's console (training's rank 0). Glue.

The driver's :func:`shared_channel` (a ``ray.util.queue.Queue``: one small actor with no CPU, started once per Ray
connection and shared by the stages) goes to the remote code, and the driver follows it while it waits for the result
(:func:`followed`). The worker side calls :func:`publish`, which sends at most one event a second and never blocks
the work on a full or gone queue.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tinyllm_ray.progress import ProgressDisplay

MIN_INTERVAL_S = 1.0  # between two events from one worker: a GPU step can take a tenth of a second

_channel: "ProgressChannel | None" = None
_last_sent = 0.0
_shared: "tuple[str, ProgressChannel] | None" = None  # the driver's channel, with the Ray job it was made in


class ProgressChannel:
    """A bounded queue of plain-dict events; pickles to the workers as its actor handle."""

    def __init__(self, maxsize: int = 256):
        from ray.util.queue import Queue

        # outside any caller's placement group (a sweep trial's has no room for it), like evaluate's task
        self.queue = Queue(maxsize=maxsize, actor_options={"num_cpus": 0, "scheduling_strategy": "DEFAULT"})

    def put(self, event: Mapping[str, Any]) -> None:
        from ray.util.queue import Full

        with contextlib.suppress(Full):
            self.queue.put_nowait(dict(event))

    def drain(self) -> list[dict[str, Any]]:
        size = self.queue.qsize()
        return self.queue.get_nowait_batch(size) if size else []

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a cluster shutting down may have taken the actor already
            self.queue.shutdown()


def shared_channel() -> ProgressChannel:
    """The driver's channel for this Ray connection (an actor costs a worker process: one, not one per stage), with
    anything a finished stage left in it dropped."""
    import ray

    global _shared
    context = ray.get_runtime_context()
    job = f"{context.get_job_id()}@{context.get_node_id()}"  # job ids restart at 1 on a new local cluster
    if _shared is None or _shared[0] != job:
        _shared = (job, ProgressChannel())
    channel = _shared[1]
    with contextlib.suppress(Exception):
        channel.drain()
    return channel


def install(channel: "ProgressChannel | None") -> None:
    """Worker side: the channel this process's :func:`publish` calls send to (None: they do nothing)."""
    global _channel, _last_sent
    _channel, _last_sent = channel, 0.0


def publish(event: Mapping[str, Any], final: bool = False) -> None:
    """Worker side: send ``event`` unless one went out less than a second ago (``final`` always goes)."""
    global _last_sent
    if _channel is None:
        return
    now = time.monotonic()
    if not final and now - _last_sent < MIN_INTERVAL_S:
        return
    _last_sent = now
    try:
        _channel.put(event)
    except Exception:  # noqa: BLE001 - progress is a courtesy: the work goes on without it
        install(None)


@contextlib.contextmanager
def followed(channel: ProgressChannel, display: ProgressDisplay,
             render: Callable[[dict[str, Any]], tuple[int, dict[str, str]]], poll_s: float = 0.5) -> Iterator[None]:
    """While the body waits on remote work, a thread moves the channel's latest event to ``display``; ``render``
    turns an event into (done, facts). The display is closed at the end; the channel stays for the next stage."""
    stop = threading.Event()

    def pump() -> None:
        while True:
            finished = stop.wait(poll_s)
            with contextlib.suppress(Exception):  # a lost event only delays the display
                events = channel.drain()
                if events:
                    done, facts = render(events[-1])
                    display.update(done, **facts)
            if finished:
                return

    thread = threading.Thread(target=pump, name="tinyllm-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        display.close()
