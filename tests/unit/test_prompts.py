"""Teacher-forcing prompts, demonstrations, student inputs and answer parsing, on hand-written problems."""

from __future__ import annotations

import pytest

from tinyllm_ray import prompts
from tinyllm_ray.prompts import (
    answer_prompt,
    exact_match,
    normalize,
    parse_choice,
    rationale_contradicts,
    sample_demos,
    student_input,
    student_prompt,
    teacher_forcing_prompt,
)

QUERY = {
    "id": "q",
    "question": "Which gas do plants absorb?",
    "choices": ["oxygen", "carbon dioxide", "helium"],
    "answer_index": 1,
    "answer": "carbon dioxide",
}
DEMO_1 = {
    "id": "d1",
    "question": "What melts ice?",
    "choices": ["heat", "cold"],
    "answer_index": 0,
    "answer": "heat",
}
DEMO_2 = {
    "id": "d2",
    "question": "What do fish breathe with?",
    "choices": ["lungs", "gills", "fins", "scales"],
    "answer_index": 1,
    "answer": "gills",
}


def pool(n: int) -> list[dict]:
    return [{"id": f"p{i:02d}", "question": f"question {i}?", "choices": ["x", "y"], "answer_index": i % 2}
            for i in range(n)]


# ---------------------------------------------------------------- teacher prompts

def test_teacher_forcing_prompt_matches_paper_template_exactly():
    expected = (
        "Question:\n"
        "Which gas do plants absorb?\n"
        "Options:\n"
        "(a) oxygen\n"
        "(b) carbon dioxide\n"
        "(c) helium\n"
        "Answer:\n"
        "(b) carbon dioxide\n"
        "Rationale:\n"
        "Let's think step by step."
    )
    assert teacher_forcing_prompt(QUERY, []) == expected


def test_teacher_forcing_prompt_with_instruction_and_context():
    problem = dict(QUERY, context="Plants photosynthesise.")
    expected = (
        "Explain why.\n\n"
        "Question:\n"
        "Plants photosynthesise.\n"
        "Which gas do plants absorb?\n"
        "Options:\n"
        "(a) oxygen\n"
        "(b) carbon dioxide\n"
        "(c) helium\n"
        "Answer:\n"
        "(b) carbon dioxide\n"
        "Rationale:\n"
        "Let's think step by step."
    )
    assert teacher_forcing_prompt(problem, [], instruction="  Explain why.  ") == expected


def test_teacher_forcing_prompt_demos_before_query_with_answers():
    text = teacher_forcing_prompt(QUERY, [DEMO_1, DEMO_2])
    expected = (
        "Question:\nWhat melts ice?\nOptions:\n(a) heat\n(b) cold\nAnswer:\n(a) heat"
        "\n\n"
        "Question:\nWhat do fish breathe with?\nOptions:\n(a) lungs\n(b) gills\n(c) fins\n(d) scales\n"
        "Answer:\n(b) gills"
        "\n\n"
        "Question:\nWhich gas do plants absorb?\nOptions:\n(a) oxygen\n(b) carbon dioxide\n(c) helium\n"
        "Answer:\n(b) carbon dioxide\nRationale:\nLet's think step by step."
    )
    assert text == expected
    assert text.index("What melts ice?") < text.index("What do fish") < text.index("Which gas")
    assert text.endswith(teacher_forcing_prompt(QUERY, []))
    # demos without a rationale carry no empty "Let's think step by step." (only the query asks for one)
    assert text.count("Rationale:") == 1


def test_demo_rationale_is_shown_after_the_cue():
    demo = dict(DEMO_1, demo_rationale="Heat raises temperature above 0C.")
    text = teacher_forcing_prompt(QUERY, [demo])
    assert "Answer:\n(a) heat\nRationale:\nLet's think step by step. Heat raises temperature above 0C.\n\n" in text
    assert text.count("Rationale:") == 2


# ---------------------------------------------------------------- demonstrations

def test_sample_demos_excludes_query_and_is_deterministic():
    items = pool(20)
    for query in ("p00", "p07", "p19"):
        demos = sample_demos(items, query, 5, seed=0)
        assert len(demos) == 5
        assert query not in [d["id"] for d in demos]
        assert len({d["id"] for d in demos}) == 5
        assert sample_demos(items, query, 5, seed=0) == demos


def test_sample_demos_depends_on_seed_and_query():
    items = pool(20)
    by_seed = {tuple(d["id"] for d in sample_demos(items, "p03", 2, seed=s)) for s in range(10)}
    assert len(by_seed) > 1
    by_query = {tuple(d["id"] for d in sample_demos(items, f"p{q:02d}", 2, seed=0)) for q in range(10)}
    assert len(by_query) > 1


def test_sample_demos_excludes_query_even_when_pool_is_exact():
    items = pool(3)
    demos = sample_demos(items, "p01", 2, seed=5)
    assert sorted(d["id"] for d in demos) == ["p00", "p02"]


def test_sample_demos_pool_too_small():
    with pytest.raises(ValueError, match="need 3 demonstrations"):
        sample_demos(pool(3), "p01", 3, seed=0)
    with pytest.raises(ValueError):
        sample_demos([], "p01", 1, seed=0)


def _sample_demos_by_scanning(pool, query_id, k, seed):
    """The original O(pool) definition: sample from a copy of the pool without the query."""
    import random

    candidates = [p for p in pool if p["id"] != query_id]
    return random.Random(f"{seed}:{query_id}").sample(candidates, k)


@pytest.mark.parametrize("size", [3, 8, 21, 22, 40, 200])
def test_demo_positions_pick_what_sampling_the_pool_without_the_query_picks(size):
    """Same demos as before the O(k) rewrite, so existing rationales keep their fingerprints; both of random.sample's
    branches (small and large populations) are covered by the sizes."""
    items = pool(size)
    for k in sorted({1, 2, min(7, size - 1)}):
        for seed in (0, 3):
            for position in sorted({0, 1, size // 2, size - 1}):
                query = items[position]["id"]
                expected = _sample_demos_by_scanning(items, query, k, seed)
                assert [items[i] for i in prompts.demo_positions(size, position, query, k, seed)] == expected
                assert sample_demos(items, query, k, seed) == expected
            outsider = _sample_demos_by_scanning(items, "eval-1", k, seed)  # a query from another split
            assert [items[i] for i in prompts.demo_positions(size, None, "eval-1", k, seed)] == outsider


def test_fixed_sampler_gives_every_query_the_same_demos_but_never_its_own():
    items = pool(30)
    picks = {q["id"]: [d["id"] for d in sample_demos(items, q["id"], 3, seed=1, sampler="fixed")] for q in items}
    outsider = [d["id"] for d in sample_demos(items, "eval-1", 3, seed=1, sampler="fixed")]
    shared = [ids for ids in picks.values() if ids == outsider]
    assert len(shared) == 30 - 3  # all but the three queries that are themselves a shared demo
    for query, ids in picks.items():
        assert query not in ids and len(set(ids)) == 3
        if query in outsider:  # replaced by the spare draw, the other two keep their order
            assert [i for i in outsider if i != query] == ids[:2] and ids[2] not in outsider
    assert sample_demos(items, "eval-1", 3, seed=2, sampler="fixed") != sample_demos(items, "eval-1", 3, seed=1,
                                                                                      sampler="fixed")


def test_fixed_sampler_with_a_pool_just_large_enough():
    assert sorted(d["id"] for d in sample_demos(pool(3), "p01", 2, seed=0, sampler="fixed")) == ["p00", "p02"]
    assert len(sample_demos(pool(2), "eval-1", 2, seed=0, sampler="fixed")) == 2
    with pytest.raises(ValueError, match="need 3 demonstrations"):
        sample_demos(pool(3), "p01", 3, seed=0, sampler="fixed")


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="unknown demo sampler 'shared'"):
        prompts.demo_positions(10, None, "q", 2, 0, sampler="shared")


def test_sample_demos_k_zero():
    assert sample_demos(pool(5), "p00", 0, seed=0) == []
    assert sample_demos([], "p00", 0, seed=0) == []


# ---------------------------------------------------------------- answer prompt (teacher accuracy)

def test_answer_prompt_hides_query_answer():
    text = answer_prompt(QUERY, [DEMO_1])
    query_block = text.split("\n\n")[-1]
    assert query_block == (
        "Question:\nWhich gas do plants absorb?\nOptions:\n(a) oxygen\n(b) carbon dioxide\n(c) helium\nAnswer:"
    )
    assert text.endswith("Answer:")
    assert "Answer:\n(b) carbon dioxide" not in text
    assert "Rationale" not in text
    # the demo still shows its answer
    assert text.startswith("Question:\nWhat melts ice?\nOptions:\n(a) heat\n(b) cold\nAnswer:\n(a) heat\n\n")


def test_answer_prompt_instruction():
    assert answer_prompt(QUERY, [], instruction="Pick one.").startswith("Pick one.\n\nQuestion:\n")


# ---------------------------------------------------------------- student

def test_student_input_format():
    assert student_input(QUERY) == (
        "Which gas do plants absorb?\nAnswer Choices:\n(a) oxygen\n(b) carbon dioxide\n(c) helium"
    )


def test_student_input_prepends_context():
    problem = dict(QUERY, context="Long abstract.")
    assert student_input(problem) == (
        "Long abstract.\nWhich gas do plants absorb?\nAnswer Choices:\n(a) oxygen\n(b) carbon dioxide\n(c) helium"
    )
    assert student_input(dict(QUERY, context=None)) == student_input(QUERY)
    assert student_input(dict(QUERY, context="")) == student_input(QUERY)


def test_student_prompt():
    assert student_prompt("predict: ", "Q\nAnswer Choices:\n(a) x") == "predict: Q\nAnswer Choices:\n(a) x\n"


def test_letter_bounds():
    assert prompts.letter(0) == "a" and prompts.letter(25) == "z"
    with pytest.raises(ValueError):
        prompts.letter(26)
    with pytest.raises(ValueError):
        prompts.letter(-1)


# ---------------------------------------------------------------- parsing

CHOICES = ["oxygen", "carbon dioxide", "helium"]


@pytest.mark.parametrize("generated, expected", [
    ("carbon dioxide", 1),
    ("  Carbon   DIOXIDE. ", 1),
    ("helium\nbecause it floats", 2),
    ("(c)", 2),
    ("(C)", 2),
    ("The answer is (b) foo", 1),
    ("The answer is (a) carbon dioxide", 0),  # explicit letter wins over text found later
    ("I think it is oxygen for sure", 0),  # single option text in free text
])
def test_parse_choice_picks(generated, expected):
    assert parse_choice(generated, CHOICES) == expected


@pytest.mark.parametrize("generated", [
    "",
    "   ",
    "purple monkey",
    "either oxygen or helium",  # ambiguous
    "(z)",  # letter out of range
])
def test_parse_choice_none(generated):
    assert parse_choice(generated, CHOICES) is None


def test_normalize_and_exact_match():
    assert normalize("  The   Answer.  ") == "the answer"
    assert exact_match("Carbon Dioxide.", "carbon dioxide")
    assert exact_match("carbon\n dioxide", "Carbon dioxide")
    assert not exact_match("carbon", "carbon dioxide")
    assert not exact_match("oxygen", "helium")


@pytest.mark.parametrize("rationale, answer_index, expected", [
    ("... so the answer is (c).", 1, True),
    ("... so the answer is (b).", 1, False),
    ("Therefore the Answer is (A)", 1, True),
    ("plants absorb carbon dioxide", 1, False),
    ("the answer is (z)", 1, False),  # not an option: not a contradiction
])
def test_rationale_contradicts(rationale, answer_index, expected):
    assert rationale_contradicts(rationale, answer_index, CHOICES) is expected


def test_rationale_contradicts_uses_final_answer():
    rationale = "One might say the answer is (a), but plants absorb CO2, so the answer is (b)."
    assert rationale_contradicts(rationale, 1, CHOICES) is False
    assert rationale_contradicts("The answer is (b)? No: the answer is (c).", 1, CHOICES) is True
