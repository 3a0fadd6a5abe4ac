"""Rationale quality flags, their summaries and the training-set filter built on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyllm_ray import quality
from tinyllm_ray.config import RationaleFilter
from tinyllm_ray.quality import drop_reason, is_degenerate, quality_flags, repeated_share, summarize_flags

TINYLLM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyllm"
needs_tinyllm = pytest.mark.skipif(not TINYLLM.is_dir(), reason=f"TinyLLM data not present at {TINYLLM}")

CHOICES = ["heat", "cold", "dark", "light"]

# Real TinyLLM teacher outputs (obqa / arc train), as load_tinyllm_rationales returns them; long loops shortened.
SUN_LISTING = (  # obqa train 0, LLaMA-2: templated listing, one line repeated (42% of tokens), cut off
    "Let's think step by step.\nIf the sun is not there, the plants will not sprout, bloom and wilt.\n"
    "The sun is responsible for puppies learning new tricks.\n"
    "The sun is responsible for children growing up and getting old.\n"
    "The sun is not responsible for flowers wilting in a vase.\n"
    "The sun is not responsible for children growing up and getting old.\n"
    "The sun is responsible for puppies learning new tricks.\n"
    "The sun is responsible for children growing up"
)
SOFT_LOOP = "Hair is the " + "soft, " * 60 + "soft"  # obqa train 4064, FLAN-T5
PARENT_LOOP = (  # obqa train 3621, LLaMA-2
    "Let's think step by step. округу\n\nDNA is a vehicle for passing inherited characteristics from parent to what?"
    + "\n\nParent to what?" * 14 + "\n\nParent to"
)
RAINBOW_LOOP = (  # obqa train 248, LLaMA-2: a three-sentence loop
    "Let's think step by step.The rainbow is formed when sunlight enters a drop of water, bends, and is reflected out. "
    "The light is split into its constituent colors. This is called refraction. The rainbow is formed when light "
    "enters a drop of water, bends, and is reflected out. The light is split into its constituent colors. This is "
    "called refraction.\nThe rainbow is formed when light enters a drop of water, bends, and is reflected out. "
    "The light is"
)
SPLASH_LOOP = (  # obqa train 2707, FLAN-T5: one sentence three times, then the answer statement
    "Splashing of chemicals can be dangerous. Splashing of chemicals can be dangerous. "
    "Splashing of chemicals can be dangerous. Thus, the answer is (b) be safe"
)
MITOSIS_ECHO = (  # arc train 408, FLAN-T5: a sound rationale whose answer statement echoes it verbatim
    "In mitosis, the products are identical to the parent cell, while in meiosis the products are different from "
    "the parent cell. Thus, the answer is (b) In mitosis, the products are identical to the parent cell, while in "
    "meiosis the products are different from the parent cell."
)
GOOD = "Heat adds energy to the ice, so its molecules move apart and it melts. Thus, the answer is (a) heat"


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("text", ["", "   ", " \n\t "])
def test_empty(text):
    assert quality_flags(text, "stop", 0, CHOICES) == {"empty"}


def test_none_counts_as_empty():
    assert quality_flags(None, "stop", 0, CHOICES) == {"empty"}  # type: ignore[arg-type]


def test_clean_rationale_has_no_flags():
    assert quality_flags(GOOD, "stop", 0, CHOICES) == set()


def test_truncated_is_finish_reason_length():
    assert quality_flags(GOOD, "length", 0, CHOICES) == {"truncated"}
    assert quality_flags("", "length", 0, CHOICES) == {"empty", "truncated"}
    assert quality_flags(GOOD, "stop", 0, CHOICES) == set()


def test_contradicting_names_another_option():
    text = "Cold slows molecules down. Thus, the answer is (b) cold"
    assert quality_flags(text, "stop", 0, CHOICES) == {"contradicting"}
    assert quality_flags(text, "stop", 1, CHOICES) == set()
    assert quality_flags("the answer is (a), no wait, the answer is (c)", "stop", 0, CHOICES) == {"contradicting"}
    assert quality_flags("The answer is (z).", "stop", 0, CHOICES) == set()  # not an option: not a contradiction


def test_flags_combine():
    text = "Cold cold cold cold cold cold cold cold cold cold cold. Thus, the answer is (b) cold"
    assert quality_flags(text, "length", 0, CHOICES) == {"degenerate", "truncated", "contradicting"}


@pytest.mark.parametrize("name, text, degenerate", [
    ("soft loop", SOFT_LOOP, True),
    ("short-line loop", PARENT_LOOP, True),
    ("sentence loop", RAINBOW_LOOP, True),
    ("sentence x3 before the answer statement", SPLASH_LOOP, True),
    ("templated listing with one repeated line", SUN_LISTING, False),
    ("answer statement echoing the rationale", MITOSIS_ECHO, False),
    ("ordinary rationale", GOOD, False),
    ("too short to judge", "yes yes yes yes yes yes yes yes yes", False),
    ("ten tokens, one loop", "yes yes yes yes yes yes yes yes yes yes", True),
])
def test_degenerate_rule_on_real_rationales(name, text, degenerate):
    assert is_degenerate(text) is degenerate, (name, repeated_share(quality.without_answer_statement(text)))
    assert ("degenerate" in quality_flags(text, "stop", 0, CHOICES)) is degenerate


def test_repeated_share_counts_tokens_inside_earlier_ngrams():
    assert repeated_share("a b c d e " * 3) == pytest.approx(10 / 15)
    assert repeated_share("a b c d e f g h i j") == 0.0
    assert repeated_share("a b c") == 0.0
    assert repeated_share("Soft, SOFT soft. soft soft soft") == pytest.approx(5 / 6)  # case and punctuation ignored
    assert 0.40 < repeated_share(SUN_LISTING) < quality.REPEAT_MAX_SHARE


def test_without_answer_statement_cuts_at_the_last_one():
    assert quality.without_answer_statement(GOOD).endswith("it melts. Thus, ")
    text = "The answer is (a). The answer is (a). So the answer is (a)"
    assert quality.without_answer_statement(text) == "The answer is (a). The answer is (a). So "
    assert quality.without_answer_statement("no statement") == "no statement"


# ---------------------------------------------------------------- summaries

def test_summarize_flags():
    rows = [
        {"rationale": GOOD, "finish_reason": "stop", "answer_index": 0, "choices": CHOICES, "error": None},
        {"rationale": GOOD, "finish_reason": "length", "answer_index": 1, "choices": CHOICES, "error": None},
        {"rationale": "  ", "finish_reason": "stop", "answer_index": 0, "choices": CHOICES, "error": None},
        {"rationale": SOFT_LOOP, "finish_reason": "length", "answer_index": 0, "choices": CHOICES},
        {"rationale": "", "finish_reason": "error", "answer_index": 0, "choices": CHOICES, "error": "engine died"},
    ]
    assert summarize_flags(rows) == {"checked": 4, "empty": 1, "degenerate": 1, "truncated": 2,
                                     "contradicting": 1, "flagged": 3}


def test_summarize_flags_without_problems_skips_contradictions():
    rows = [{"rationale": "Thus, the answer is (b) cold", "finish_reason": "stop"}]
    assert summarize_flags(rows) == {"checked": 1, "empty": 0, "degenerate": 0, "truncated": 0,
                                     "contradicting": 0, "flagged": 0}


def test_summarize_flags_empty_input_has_every_key():
    assert summarize_flags([]) == {"checked": 0, **dict.fromkeys(quality.FLAGS, 0), "flagged": 0}


# ---------------------------------------------------------------- filter

def test_rationale_filter_defaults():
    f = RationaleFilter()
    assert (f.drop_empty, f.drop_degenerate, f.drop_truncated, f.drop_contradicting, f.min_words) == (
        True, False, False, True, 0)


def test_rationale_filter_rejects_unknown_keys_and_negative_min_words():
    with pytest.raises(ValueError, match="drop_emtpy"):
        RationaleFilter(drop_emtpy=True)
    with pytest.raises(ValueError, match="min_words"):
        RationaleFilter(min_words=-1)


def test_rationale_filter_in_training_config():
    from tinyllm_ray.config import load_config

    config = load_config("tiny", ["training.rationale_filter.drop_truncated=true",
                                  "training.rationale_filter.min_words=3"])
    assert config.training.rationale_filter.drop_truncated is True
    assert config.training.rationale_filter.min_words == 3
    assert load_config("tiny").training.rationale_filter == RationaleFilter()


@pytest.mark.parametrize("text, finish, settings, reason", [
    (GOOD, "stop", {}, None),
    ("", "stop", {}, "empty"),
    ("", "stop", {"drop_empty": False, "min_words": 5}, None),  # blank is "empty", never "short"
    ("Thus, the answer is (b) cold", "stop", {}, "contradicting"),
    ("Thus, the answer is (b) cold", "stop", {"drop_contradicting": False}, None),
    (GOOD, "length", {}, None),
    (GOOD, "length", {"drop_truncated": True}, "truncated"),
    (SOFT_LOOP, "stop", {}, None),
    (SOFT_LOOP, "length", {"drop_degenerate": True, "drop_truncated": True}, "degenerate"),  # first reason wins
    ("heat melts ice", "stop", {"min_words": 4}, "short"),
    ("heat melts ice", "stop", {"min_words": 3}, None),
    ("heat melts it. Thus, the answer is (b)", "stop", {"min_words": 20}, "short"),  # short before contradicting
])
def test_drop_reason(text, finish, settings, reason):
    assert drop_reason(text, finish, 0, CHOICES, RationaleFilter(**settings)) == reason


# ---------------------------------------------------------------- the real TinyLLM corpus

@needs_tinyllm
def test_degenerate_rate_on_real_obqa_rationales():
    from tinyllm_ray.data import load_tinyllm_rationales

    rationales = load_tinyllm_rationales(TINYLLM / "obqa", "train")
    llama, flan = rationales["llama2_7b"], rationales["flan_t5_xl"]
    assert llama[0].startswith(SUN_LISTING[:60]) and not is_degenerate(llama[0])
    assert is_degenerate(llama[3621]) and is_degenerate(flan[4064]) and is_degenerate(llama[248])
    rate = {name: sum(map(is_degenerate, texts)) / len(texts) for name, texts in rationales.items()}
    assert 0.01 < rate["llama2_7b"] < 0.15  # LLaMA-2-7B loops now and then
    assert rate["flan_t5_xl"] < 0.02
