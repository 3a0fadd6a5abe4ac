"""``evaluation.method: loglikelihood``: the option the student finds most likely after its ``predict:`` prompt,
as lm-evaluation-harness scores multiple-choice sets (ARC, OpenBookQA: its ``acc_norm``).

For problem ``p`` with prompt ``P = student_prompt(task_prefix, student_input(p))`` and each option ``o``:

    loglikelihood(o) = sum_k log softmax(student(P, o_<k))[o_k]    over the option's tokens o_1..o_T
    score(o)         = loglikelihood(o) / len(o)                   len in characters of the option text

and the prediction is the first option with the highest score (lm-evaluation-harness: ``np.argmax(lls /
completion_len)`` with ``completion_len = len(choice)``). The prompt and the option are tokenised separately
(no special tokens, no end-of-sequence token after the option), exactly as training tokenises the answer task's
prompt and target, so no delimiter is inserted between them. Decoder-only students read the option's tokens after
the prompt's; seq2seq students (T5) get the prompt as encoder input and the option's tokens as labels.

Each problem's prompt is read once, not once per option: a pass over the prompts of up to ``batch_size`` option
rows' problems (decoder-only: left-padded, positions counted from each prompt's first real token, keeping the
prompt's key/value cache and the last position's logits; seq2seq: the encoder), then one pass over every option
of those problems against its prompt's cache or encoder states. With ARC-length prompts and options that is about
a third of the tokens of one (prompt, option) sequence per option. The vLLM backend
(:mod:`tinyllm_ray.scoring.vllm_student`) reads the same quantity from the prompt log-probabilities of each
(prompt, option) token sequence (:func:`continuation_logprob`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tinyllm_ray.scoring import ScoringOptions, Student, StudentBackend, student_prompts


def normalised(loglikelihood: float, option: str) -> float:
    """lm-evaluation-harness's ``acc_norm`` normalisation: divide by the option's length in characters (at least
    1, so an empty option cannot divide by zero)."""
    return loglikelihood / max(len(option), 1)


def pick(scores: Sequence[float]) -> int:
    """Index of the highest score; the first one on ties (as ``numpy.argmax``)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def rows(problems: Sequence[Mapping[str, Any]], loglikelihoods: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """One row per problem: the option picked, whether it is the gold one, and every option's numbers."""
    out = []
    for problem, lls in zip(problems, loglikelihoods):
        choices = list(problem["choices"])
        scores = [normalised(ll, choice) for ll, choice in zip(lls, choices)]
        picked = pick(scores)
        out.append({"id": problem["id"], "prediction": choices[picked], "gold": problem["answer"],
                    "correct": picked == int(problem["answer_index"]), "picked": picked,
                    "loglikelihoods": [float(x) for x in lls], "scores": scores})
    return out


class LoglikelihoodScorer:
    name = "loglikelihood"

    def predict(self, student: StudentBackend, problems: Sequence[Mapping[str, Any]],
                options: ScoringOptions) -> list[dict[str, Any]]:
        return rows(problems, student.option_loglikelihoods(student_prompts(problems, options.task_prefix),
                                                            [p["choices"] for p in problems], options))


def continuation_logprob(prompt_logprobs: Sequence[Any], start: int, tokens: Sequence[int]) -> float:
    """Summed log-probability of ``tokens`` placed at ``start`` of a sequence whose per-position log-probabilities
    are ``prompt_logprobs`` (vLLM's: position k a {token id: Logprob or float} holding token k's own)."""
    total = 0.0
    for k, token in enumerate(tokens):
        value = prompt_logprobs[start + k][token]
        total += float(getattr(value, "logprob", value))
    return total


def option_loglikelihoods(student: Student, texts: Sequence[str], choices: Sequence[Sequence[str]],
                          batch_size: int) -> list[list[float]]:
    """The transformers backend: summed log-probability of every option's tokens after its problem's prompt, one list
    per problem (an empty option: 0)."""
    encode = lambda text: student.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    problems = [(i, encode(text), [encode(option) for option in options])
                for i, (text, options) in enumerate(zip(texts, choices))]
    out = [[0.0] * len(options) for options in choices]
    batches = _batches(sorted(problems, key=lambda p: -len(p[1])), batch_size)  # similar prompt lengths together
    for batch in batches:
        for (i, j), value in _batch_loglikelihoods(student, batch):
            out[i][j] = value
    return out


def _batches(problems: list, batch_size: int) -> list[list]:
    """Consecutive problems whose non-empty options fill at most ``batch_size`` rows (at least one problem each)."""
    batches, current, rows = [], [], 0
    for problem in problems:
        width = sum(1 for option in problem[2] if option)
        if current and rows + width > batch_size:
            batches.append(current)
            current, rows = [], 0
        current.append(problem)
        rows += width
    return batches + ([current] if current else [])


def _batch_loglikelihoods(student: Student, problems: Sequence[tuple[int, list[int], list[list[int]]]]):
    """((problem, option), summed log-probability) of every non-empty option of ``problems``: one pass over their
    prompts, one over their options."""
    import torch

    options = [(row, i, j, option) for row, (i, _, opts) in enumerate(problems) for j, option in enumerate(opts)
               if option]
    if not options:
        return []
    prompts = [source for _, source, _ in problems]
    owner = torch.tensor([row for row, _, _, _ in options])  # the prompt row of every option row
    targets = [option for _, _, _, option in options]
    with torch.no_grad():
        if student.seq2seq:
            logprobs = _seq2seq_logprobs(student, prompts, owner, targets)
        else:
            logprobs = _decoder_logprobs(student, prompts, owner, targets)
    return [((i, j), float(logprobs[k, :len(option)].gather(1, torch.tensor(option).unsqueeze(1)).sum()))
            for k, (_, i, j, option) in enumerate(options)]


def _decoder_logprobs(student: Student, prompts: list[list[int]], owner, targets: list[list[int]]):
    """Log-probabilities (option rows x option tokens x vocabulary): position k predicts the option's token k."""
    import torch

    device, pad = student.device, student.tokenizer.pad_token_id
    prompt_rows = owner.to(device)
    width = max(len(p) for p in prompts)
    prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    first = student.model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=1,
                          position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0))
    cache = first.past_key_values
    cache.batch_select_indices(prompt_rows)  # every option row continues its problem's prompt
    option_ids, option_mask = _padded(targets, pad).to(device), _mask(targets).to(device)
    lengths = prompt_mask.sum(-1)[prompt_rows].unsqueeze(1)
    rest = student.model(input_ids=option_ids, past_key_values=cache, use_cache=False,
                         attention_mask=torch.cat([prompt_mask[prompt_rows], option_mask], dim=1),
                         position_ids=lengths + torch.arange(option_ids.shape[1], device=device))
    # the prompt's last position predicts the option's first token; option position k predicts token k + 1
    logits = torch.cat([first.logits[prompt_rows, -1:], rest.logits[:, :-1]], dim=1)
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _seq2seq_logprobs(student: Student, prompts: list[list[int]], owner, targets: list[list[int]]):
    """Log-probabilities (option rows x option tokens x vocabulary): decoder position k predicts label k."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    device = student.device
    prompt_ids, prompt_mask = _padded(prompts, student.tokenizer.pad_token_id).to(device), _mask(prompts).to(device)
    encoded = student.model.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask).last_hidden_state
    prompt_rows = owner.to(device)
    logits = student.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[prompt_rows]),
                           attention_mask=prompt_mask[prompt_rows], labels=_padded(targets, -100).to(device)).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _padded(rows: Sequence[Sequence[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])


def _mask(rows: Sequence[Sequence[int]]):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
