"""The evaluation job's pure parts: which backend scores a student, the rows an actor call returns and how the
driver puts them back in problem order, the vLLM student's engine keywords and log-likelihood sums, and the Ray
arguments of an evaluation actor. No Ray, no vLLM."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tinyllm_ray.config import EvaluationConfig, StudentEngineConfig, TrainingConfig, fingerprint_view
from tinyllm_ray.evaluation_job import POSITION, ScoringJob, StudentActor, gather, output_rows, remote_args
from tinyllm_ray.scoring import ScoringOptions, resolve_backend
from tinyllm_ray.scoring.loglikelihood import continuation_logprob
from tinyllm_ray.scoring.vllm_student import EvaluationError, engine_kwargs, too_long

PROBLEMS = [
    {"id": "q1", "question": "Which gas do plants take in?", "choices": ["oxygen", "carbon dioxide"],
     "answer": "carbon dioxide", "answer_index": 1, "context": None, POSITION: 4},
    {"id": "q2", "question": "What melts ice fastest?", "choices": ["salt", "sand", ""], "answer": "salt",
     "answer_index": 0, "context": None, POSITION: 5},
]


def test_auto_is_vllm_for_decoder_students_when_installed_and_transformers_otherwise():
    assert resolve_backend("auto", seq2seq=False, vllm_installed=True) == "vllm"
    assert resolve_backend("auto", seq2seq=True, vllm_installed=True) == "transformers"
    assert resolve_backend("auto", seq2seq=False, vllm_installed=False) == "transformers"
    assert resolve_backend("transformers", seq2seq=False, vllm_installed=True) == "transformers"
    with pytest.raises(ValueError, match="seq2seq"):
        resolve_backend("vllm", seq2seq=True, vllm_installed=True)
    with pytest.raises(ValueError, match="not installed"):
        resolve_backend("vllm", seq2seq=False, vllm_installed=False)
    with pytest.raises(ValueError, match="unknown evaluation backend"):
        resolve_backend("onnx", seq2seq=False, vllm_installed=True)


def test_config_rejects_unknown_keys_and_keeps_operational_settings_out_of_the_fingerprint():
    with pytest.raises(ValueError, match="backend"):
        EvaluationConfig(backend="onnx")
    with pytest.raises(ValueError, match="extra"):
        EvaluationConfig.model_validate({"vllm": {"kv_cache_gb": 1}})
    base = fingerprint_view(EvaluationConfig())
    # how many actors, how many problems a call, the KV-cache size: how it runs, not what it scores
    assert fingerprint_view(EvaluationConfig(actors=4, problems_per_call=8,
                                             vllm=StudentEngineConfig(kv_cache_memory_bytes=2**30))) == base
    # the engine's own settings count only when vLLM scores the student (evaluate.evaluation_fingerprint)
    assert fingerprint_view(EvaluationConfig(vllm=StudentEngineConfig(dtype="bfloat16"))) == base
    assert fingerprint_view(StudentEngineConfig(dtype="bfloat16")) != fingerprint_view(StudentEngineConfig())
    assert fingerprint_view(EvaluationConfig(backend="transformers")) != base
    assert set(base) == {"max_new_tokens", "batch_size", "teachers", "method"}  # older reports stay reusable


def test_rows_round_trip_through_the_job_in_problem_order():
    rows = {"generate": [{"id": "q1", "correct": True}, {"id": "q2", "correct": False}],
            "loglikelihood": [{"id": "q1", "scores": [-1.0, -0.5]}, {"id": "q2", "scores": [-2.0]}]}
    out = output_rows([4, 5], rows)
    assert out[POSITION] == [4, 5, 4, 5] and out["method"] == ["generate"] * 2 + ["loglikelihood"] * 2
    records = [dict(zip(out, values)) for values in zip(*out.values())]
    other = output_rows([0, 1, 2, 3], {m: [{"id": f"p{i}"} for i in range(4)] for m in rows})
    records += [dict(zip(other, values)) for values in zip(*other.values())]
    gathered = gather(reversed(records), 6, ("generate", "loglikelihood"))  # calls finish in any order
    assert [r["id"] for r in gathered["generate"]] == ["p0", "p1", "p2", "p3", "q1", "q2"]
    assert gathered["loglikelihood"][4] == {"id": "q1", "scores": [-1.0, -0.5]}


def test_gather_names_missing_repeated_and_unasked_rows():
    records = [{POSITION: 0, "method": "generate", "row": json.dumps({"id": "a"})}]
    with pytest.raises(RuntimeError, match="no 'generate' row for 1 of 2 problems .first: problem 1"):
        gather(records, 2, ("generate",))
    with pytest.raises(RuntimeError, match="twice"):
        gather(records * 2, 1, ("generate",))
    with pytest.raises(RuntimeError, match="not asked for"):
        gather(records, 1, ("loglikelihood",))


class FakeStudent:
    """A backend whose answers and log-likelihoods are fixed: what an actor does with them is under test."""

    seq2seq = False

    def greedy_answers(self, texts, options):
        assert all(text.startswith(options.task_prefix) for text in texts)
        return ["Carbon dioxide ", "sand"][:len(texts)]

    def option_loglikelihoods(self, texts, choices, options):
        return [[-6.0, -7.0], [-8.0, -4.0, 0.0]][:len(texts)]


def test_an_actor_call_scores_every_method_and_keeps_positions(monkeypatch):
    job = ScoringJob("unused", False, "vllm", ("generate", "loglikelihood"), ScoringOptions("predict: "))
    monkeypatch.setattr(ScoringJob, "load", lambda self: FakeStudent())
    out = StudentActor(job)(SimpleNamespace(to_pylist=lambda: PROBLEMS))
    assert out[POSITION] == [4, 5, 4, 5]
    generate, _, loglikelihood, _ = (json.loads(r) for r in out["row"])
    assert generate == {"id": "q1", "prediction": "Carbon dioxide ", "gold": "carbon dioxide", "correct": True}
    assert loglikelihood["picked"] == 1 and loglikelihood["scores"] == [-1.0, -0.5] and loglikelihood["correct"]


def test_continuation_logprob_reads_each_option_token_at_its_position():
    logprob = lambda value: SimpleNamespace(logprob=value)  # noqa: E731 - vLLM's Logprob
    prompt_logprobs = [None, {7: logprob(-1.0)}, {3: logprob(-0.25)}, {9: logprob(-0.5), 1: logprob(-3.0)}]
    assert continuation_logprob(prompt_logprobs, 2, [3, 9]) == -0.75
    assert continuation_logprob([None, {5: -2.0}], 1, [5]) == -2.0  # plain floats too
    assert continuation_logprob(prompt_logprobs, 2, []) == 0.0
    with pytest.raises(KeyError):
        continuation_logprob(prompt_logprobs, 2, [4])  # a token the engine did not score is an error, not 0


def test_engine_kwargs_and_length_checks(tmp_path):
    engine = StudentEngineConfig()
    kwargs = engine_kwargs(engine, "/s", on_gpu=False)
    assert kwargs == {"model": "/s", "tokenizer": "/s", "dtype": "float32", "max_model_len": 2048,
                      "enforce_eager": True, "seed": 0, "kv_cache_memory_bytes": 256 * 2**20}
    # auto: the checkpoint's own dtype, as transformers loads it (vLLM's auto would downcast float32)
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert engine_kwargs(engine, str(tmp_path), on_gpu=False)["dtype"] == "bfloat16"
    assert engine_kwargs(StudentEngineConfig(dtype="float16"), str(tmp_path), on_gpu=False)["dtype"] == "float16"
    gpu = engine_kwargs(StudentEngineConfig(kv_cache_memory_bytes=None, extra={"max_num_seqs": 8}), "/s", True)
    assert gpu["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in gpu and gpu["max_num_seqs"] == 8
    with pytest.raises(EvaluationError, match="evaluation.vllm.kv_cache_memory_bytes"):
        engine_kwargs(StudentEngineConfig(kv_cache_memory_bytes=None), "/s", on_gpu=False)
    assert too_long([10, 20], 12, 32, "prompt") is None
    assert "evaluation.vllm.max_model_len 32" in too_long([10, 21], 12, 32, "prompt")


def test_an_evaluation_actor_asks_for_a_training_workers_resources():
    training = TrainingConfig(cpus_per_worker=2, custom_resources_per_worker={"tinyllm_trainer": 1})
    args = remote_args(training, EvaluationConfig(), "vllm")
    assert (args["num_cpus"], args["num_gpus"], args["resources"]) == (2, 0, {"tinyllm_trainer": 1})
    assert args["scheduling_strategy"] == "DEFAULT"  # not in a sweep trial's placement group
    assert args["runtime_env"]["env_vars"]["VLLM_TARGET_DEVICE"] == "cpu"  # the CPU teachers' engine settings
    plain = remote_args(TrainingConfig(use_gpu=True), EvaluationConfig(), "transformers")
    assert plain["num_gpus"] == 1 and "runtime_env" not in plain and "resources" not in plain
