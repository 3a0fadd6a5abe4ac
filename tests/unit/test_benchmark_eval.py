"""The eval benchmark section's own logic: how it counts agreement between backends and the rows it renders."""

from __future__ import annotations

from benchmarks.evaluation import EvalResult, agreement


def test_agreement_counts_same_answers_and_the_largest_loglikelihood_gap():
    a = [{"prediction": "x", "correct": True}, {"prediction": "y", "correct": False}]
    b = [{"prediction": "x", "correct": True}, {"prediction": "z", "correct": True}]
    assert agreement("generate", a, b) == {"same": 1, "of": 2, "accuracy": [1, 2]}
    ll_a = [{"picked": 0, "loglikelihoods": [-1.0, -2.0], "correct": True}]
    ll_b = [{"picked": 0, "loglikelihoods": [-1.00002, -2.0], "correct": True}]
    assert agreement("loglikelihood", ll_a, ll_b) == {"same": 1, "of": 1, "max_abs_loglikelihood_diff": 2e-05,
                                                      "accuracy": [1, 1]}


def test_rows_name_each_backend_and_the_ratio():
    run = {"seconds": 10.0, "problems": 32, "problems_per_s": 3.2, "first_call_s": 4.0,
           "steady": {"seconds": 6.0, "problems": 16, "problems_per_s": 2.667}}
    slow = {**run, "seconds": 30.0, "problems_per_s": 1.067, "steady": {**run["steady"], "problems_per_s": 0.8}}
    data = {"source": "ARC valid"}
    for method, extra in (("generate", {}), ("loglikelihood", {"max_abs_loglikelihood_diff": 1e-5})):
        data[method] = {"vllm": run, "transformers": slow,
                        "agreement": {"same": 31, "of": 32, "accuracy": [5, 6], **extra}}
    rows = EvalResult("eval", data, key="smollm2").rows()
    assert [r[1] for r in rows[:3]] == ["generate, vllm", "generate, vllm steady", "generate, transformers"]
    ratio = rows[4]
    assert ratio[1] == "generate: vllm / transformers" and "3.00x faster; steady 3.33x; same answer 31/32" in ratio[6]
    assert "max |loglikelihood diff| 1e-05" in rows[-1][6]
