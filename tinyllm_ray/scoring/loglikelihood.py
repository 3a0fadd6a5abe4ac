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

One forward pass per (problem, option) sequence, ``batch_size`` sequences a pass, sorted by length so a pass pads
little; right padding, so no real token attends to or is positioned after a pad.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tinyllm_ray.scoring import ScoringOptions, Student, student_prompts


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

    def predict(self, student: Student, problems: Sequence[Mapping[str, Any]],
                options: ScoringOptions) -> list[dict[str, Any]]:
        return rows(problems, option_loglikelihoods(student, student_prompts(problems, options.task_prefix),
                                                    [p["choices"] for p in problems], options.batch_size))


def option_loglikelihoods(student: Student, texts: Sequence[str], choices: Sequence[Sequence[str]],
                          batch_size: int) -> list[list[float]]:
    """Summed log-probability of every option's tokens after its problem's prompt: one list per problem."""
    from tqdm import tqdm

    encode = lambda text: student.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    requests = []  # (problem, option, prompt ids, option ids)
    for i, (text, options) in enumerate(zip(texts, choices)):
        source = encode(text)
        requests += [(i, j, source, encode(option)) for j, option in enumerate(options)]
    out = [[0.0] * len(options) for options in choices]
    todo = sorted((r for r in requests if r[3]), key=lambda r: -(len(r[2]) + len(r[3])))  # an empty option: 0
    for start in tqdm(range(0, len(todo), batch_size), desc="student eval (loglikelihood)", unit="batch"):
        batch = todo[start:start + batch_size]
        for (i, j, _, _), value in zip(batch, _batch_loglikelihoods(student, [(r[2], r[3]) for r in batch])):
            out[i][j] = value
    return out


def _batch_loglikelihoods(student: Student, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """One forward pass over right-padded (prompt, option) pairs; each option's summed token log-probabilities."""
    import torch

    pad = student.tokenizer.pad_token_id
    if student.seq2seq:
        sources, labels = [s for s, _ in pairs], [t for _, t in pairs]
        inputs = dict(input_ids=_padded(sources, pad), attention_mask=_mask(sources), labels=_padded(labels, -100))
        starts = [0] * len(pairs)  # logits[k] predicts labels[k]
    else:
        sequences = [s + t for s, t in pairs]
        inputs = dict(input_ids=_padded(sequences, pad), attention_mask=_mask(sequences))
        starts = [len(s) - 1 for s, _ in pairs]  # logits[k] predicts token k + 1
    with torch.no_grad():
        logits = student.model(**{k: v.to(student.device) for k, v in inputs.items()}).logits
    values = []
    for row, (start, (_, option)) in enumerate(zip(starts, pairs)):
        logprobs = torch.log_softmax(logits[row, start:start + len(option)].float(), dim=-1)
        target = torch.tensor(option, device=logprobs.device).unsqueeze(1)
        values.append(float(logprobs.gather(1, target).sum()))
    return values


def _padded(rows: Sequence[Sequence[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])


def _mask(rows: Sequence[Sequence[int]]):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
