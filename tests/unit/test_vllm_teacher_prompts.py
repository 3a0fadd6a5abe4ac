"""The vLLM teacher's prompt text and token ids, on a real (tiny, offline) tokenizer: a chat template that writes
BOS itself must not get a second one from tokenisation, and a plain prompt still gets its one."""

from __future__ import annotations

import pytest
from tokenizers import processors

from tinyllm_ray.config import TeacherConfig
from tinyllm_ray.models import _tiny_tokenizer
from tinyllm_ray.teachers.vllm import prompt_token_ids, render_prompt

PROBLEM = {"id": "p1", "dataset": "demo", "question": "What melts ice?", "choices": ["heat", "cold"],
           "answer_index": 0, "answer": "heat", "context": None}
DEMO = {"id": "d1", "dataset": "demo", "question": "What do fish breathe with?", "choices": ["lungs", "gills"],
        "answer_index": 1, "answer": "gills", "context": None}


@pytest.fixture(scope="module")
def llama_like_tokenizer():
    """Adds BOS on encode (like Llama's) and has a chat template that writes BOS too (like Llama-2-chat's)."""
    tokenizer = _tiny_tokenizer(512)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    return tokenizer


@pytest.mark.parametrize("chat", [True, False])
def test_a_prompt_starts_with_exactly_one_bos(llama_like_tokenizer, chat):
    teacher = TeacherConfig(name="t", model="builtin:tiny-llama", system_prompt="Be brief." if chat else None)
    text = render_prompt(llama_like_tokenizer, teacher, PROBLEM, [DEMO], "rationale", chat)
    assert text.startswith("<s>[system] Be brief.") == chat
    ids = prompt_token_ids(llama_like_tokenizer, text, chat)
    assert ids[0] == llama_like_tokenizer.bos_token_id
    assert ids.count(llama_like_tokenizer.bos_token_id) == 1
    assert llama_like_tokenizer.encode(text).count(llama_like_tokenizer.bos_token_id) == (2 if chat else 1)
