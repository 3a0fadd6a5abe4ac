"""Scoring methods: log-likelihood scores of a tiny student equal a direct, unbatched computation of the same
quantity; the generate scorer is the paper's greedy answer + exact match; the registry behind the seam."""

from __future__ import annotations

import pytest

from tinyllm_ray import prompts
from tinyllm_ray.scoring import METHODS, ScoringOptions, Student, methods_of, scorer, student_prompts
from tinyllm_ray.scoring import generate as generate_scoring
from tinyllm_ray.scoring import loglikelihood

PREFIX = "predict: "
PROBLEMS = [
    {"id": "q1", "question": "Which gas do plants take in?", "choices": ["oxygen", "carbon dioxide", "helium"],
     "answer": "carbon dioxide", "answer_index": 1, "context": None},
    {"id": "q2", "question": "What melts ice fastest?", "choices": ["salt", "sand"], "answer": "salt",
     "answer_index": 0, "context": "Roads in winter."},
    {"id": "q3", "question": "Which is a mammal?", "choices": ["whale", "shark", "trout", "eel — électrique"],
     "answer": "whale", "answer_index": 0, "context": None},
]


@pytest.fixture(scope="module", params=["builtin:tiny-llama", "builtin:tiny-t5"])
def student(request):
    import torch

    from tinyllm_ray.models import is_encoder_decoder, resolve_model

    folder = resolve_model(request.param)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a ~0.1M-parameter model: more threads only wait on each other on a busy machine
    yield Student.load(folder, seq2seq=is_encoder_decoder(folder), device="cpu")
    torch.set_num_threads(threads)


def direct_loglikelihood(student: Student, prompt: str, option: str) -> float:
    """log P(option tokens | prompt) with one unbatched, unpadded forward pass and log_softmax by hand."""
    import torch

    source = student.tokenizer.encode(prompt, add_special_tokens=False)
    target = student.tokenizer.encode(option, add_special_tokens=False)
    with torch.no_grad():
        if student.seq2seq:
            logits = student.model(input_ids=torch.tensor([source]), labels=torch.tensor([target])).logits[0]
            predicting = logits  # decoder position k predicts target token k
        else:
            logits = student.model(input_ids=torch.tensor([source + target])).logits[0]
            predicting = logits[len(source) - 1:len(source) + len(target) - 1]  # position k predicts token k + 1
        logprobs = torch.log_softmax(predicting.double(), dim=-1)
    return sum(float(logprobs[k, token]) for k, token in enumerate(target))


def test_loglikelihood_scores_equal_a_direct_computation(student):
    direct = []
    for problem in PROBLEMS:
        prompt = prompts.student_prompt(PREFIX, prompts.student_input(problem))
        direct.append([direct_loglikelihood(student, prompt, option) for option in problem["choices"]])
    for batch_size in (1, 4, 64):  # one sequence a pass, a few (mixed lengths and problems), all at once
        rows = scorer("loglikelihood").predict(student, PROBLEMS, ScoringOptions(PREFIX, batch_size=batch_size))
        assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
        for problem, row, lls in zip(PROBLEMS, rows, direct):
            assert row["loglikelihoods"] == pytest.approx(lls, abs=1e-4), batch_size
            # acc_norm: divided by the option's length in characters; the pick is the argmax of that
            per_char = [ll / len(option) for ll, option in zip(lls, problem["choices"])]
            assert row["scores"] == pytest.approx(per_char, abs=1e-4)
            best = max(range(len(per_char)), key=per_char.__getitem__)
            assert row["picked"] == best and row["prediction"] == problem["choices"][best]
            assert row["correct"] is (best == problem["answer_index"])
            assert all(ll < 0 for ll in row["loglikelihoods"])


def test_generate_scorer_is_greedy_answer_and_exact_match(student):
    import torch

    rows = scorer("generate").predict(student, PROBLEMS, ScoringOptions(PREFIX, batch_size=2, max_new_tokens=4))
    # unbatched greedy generation of the first problem gives the same answer
    text = student_prompts(PROBLEMS[:1], PREFIX)[0]
    encoded = student.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = student.model.generate(**encoded, max_new_tokens=4, do_sample=False,
                                        pad_token_id=student.tokenizer.pad_token_id)
    if not student.seq2seq:
        output = output[:, encoded["input_ids"].shape[1]:]
    assert rows[0]["prediction"] == student.tokenizer.decode(output[0], skip_special_tokens=True).strip()
    assert [r["correct"] for r in rows] == [prompts.exact_match(r["prediction"], p["answer"])
                                            for r, p in zip(rows, PROBLEMS)]


def test_pick_normalise_and_rows_are_pure():
    assert loglikelihood.normalised(-6.0, "abc") == -2.0 and loglikelihood.normalised(-1.0, "") == -1.0
    assert loglikelihood.pick([-1.0, -0.5, -0.5]) == 1  # first of the tied best, as numpy.argmax
    rows = loglikelihood.rows(PROBLEMS[1:2], [[-8.0, -4.0]])  # "salt" -2.0 per char, "sand" -1.0: sand wins
    assert rows == [{"id": "q2", "prediction": "sand", "gold": "salt", "correct": False, "picked": 1,
                     "loglikelihoods": [-8.0, -4.0], "scores": [-2.0, -1.0]}]
    assert generate_scoring.rows(PROBLEMS[:2], [" Carbon  Dioxide.", "sand"]) == [
        {"id": "q1", "prediction": " Carbon  Dioxide.", "gold": "carbon dioxide", "correct": True},
        {"id": "q2", "prediction": "sand", "gold": "salt", "correct": False}]


def test_registry():
    assert methods_of("generate") == ("generate",) and methods_of("both") == METHODS == ("generate", "loglikelihood")
    assert [scorer(m).name for m in METHODS] == list(METHODS)
    with pytest.raises(ValueError, match="unknown scoring method"):
        scorer("bleu")
    with pytest.raises(ValueError, match="unknown scoring method"):
        methods_of("bleu")
