"""EngineLoop on a real vLLM-CPU engine: calls from several threads share one engine (continuous batching across
shards) and get exactly what ``LLM.generate`` gives for their prompts; a prompt the engine rejects fails alone.

The engine runs in a Ray task so that vLLM's process-wide patches (it replaces ``torch.set_num_threads``) stay out
of the test process.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def _shared_engine_vs_generate() -> dict:
    import threading

    from vllm import LLM, SamplingParams

    from tinyllm_ray.teachers.engine_loop import EngineLoop
    from tinyllm_ray.models import resolve_model

    llm = LLM(model=resolve_model("builtin:tiny-llama"), dtype="float32", enforce_eager=True, max_model_len=128,
              kv_cache_memory_bytes=32 * 2**20)
    params = SamplingParams(temperature=0.0, max_tokens=12)
    shards = [[f"question {s}.{i}: which option is right?" * (1 + i % 3) for i in range(5)] for s in range(4)]
    expected = [[o.outputs[0].token_ids for o in llm.generate(shard, params, use_tqdm=False)] for shard in shards]

    loop = EngineLoop(lambda: llm, add_lock=threading.Lock())
    got: dict[int, list] = {}

    def call(index: int) -> None:
        got[index] = [list(o.outputs[0].token_ids) for o in loop.generate(shards[index], params)]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(shards))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    mixed = loop.generate(["short prompt", "word " * 400, "another short prompt"], params)
    return {"expected": [[list(t) for t in shard] for shard in expected], "got": [got.get(i) for i in range(4)],
            "mixed": [type(m).__name__ if isinstance(m, Exception) else list(m.outputs[0].token_ids) for m in mixed],
            "mixed_error": next(str(m) for m in mixed if isinstance(m, Exception)),
            "alone": list(llm.generate(["short prompt"], params, use_tqdm=False)[0].outputs[0].token_ids),
            "empty": loop.generate([], params)}


def test_threads_share_one_engine_and_get_generate_outputs(ray_cluster):
    import sys

    from ray import cloudpickle

    from tinyllm_ray.runtime import teacher_env

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable on workers
    task = ray_cluster.remote(num_cpus=1, runtime_env={"env_vars": teacher_env(on_gpu=False)})(_shared_engine_vs_generate)
    result = ray_cluster.get(task.remote(), timeout=600)
    assert result["got"] == result["expected"]
    assert all(len(tokens) > 0 for shard in result["got"] for tokens in shard)
    first, rejected, third = result["mixed"]
    assert first == result["alone"] and isinstance(third, list) and len(third) > 0
    assert rejected != first and isinstance(rejected, str) and "maximum context length" in result["mixed_error"]
    assert result["empty"] == []
