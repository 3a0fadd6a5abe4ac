"""The training set's token columns and their collation. Pure: pyarrow and numpy in, torch tensors out (torch only
where tensors are made, so the training plan imports this without torch); no Ray.

A training row (:func:`training_data.build_training_table`) holds the student input, the gold answer and one
rationale per distilled teacher. :func:`tokenise_table` turns it into the row the Train workers read: per task (task 0
the answer, task m teacher m's rationale) the prompt's token ids ``task_prefix + input`` and the target's, truncated
and ended with the end-of-sequence token, both null where the task has no target. It runs where the training set is
built (the join tasks of :mod:`tinyllm_ray.training_stream`); the worker's :class:`Collator` only pads and stacks
those ids into one padded batch per length group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tinyllm_ray.schemas import prompt_ids_column, target_ids_column, training_token_schema
from tinyllm_ray.training_data import Task, task_pairs

TOKENISE_BATCH = 1024  # rows tokenised at once: the Python lists of one batch are what a join task holds


@dataclass(frozen=True)
class Tokenisation:
    """What a training set's tokens depend on: the student's tokenizer (its model folder), the tasks (prefix and
    column each, in task-id order) and the truncation limits."""

    model_path: str
    tasks: tuple[Task, ...]
    max_input_tokens: int
    max_target_tokens: int

    @property
    def columns(self) -> list[str]:
        return [task.column for task in self.tasks]


def with_pad_token(tokenizer):
    """The tokenizer with a pad token (its end-of-sequence token when it has none): what the worker pads with, and
    what the exported student's tokenizer carries."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenise_table(table: pa.Table, tokenizer, tokenisation: Tokenisation) -> pa.Table:
    """``table`` (the training schema) as the token schema: ``id``, then per task its prompt's and target's ids, for
    the sequences :func:`training_data.task_pairs` makes (both null where a row has no target for the task).

    Targets keep their first ``max_target_tokens - 1`` tokens plus the end-of-sequence token; prompts are tokenised
    as evaluation tokenises them and, when longer than ``max_input_tokens``, keep the task prefix and the END of the
    input (the question and options follow a PubMedQA-style context), so tasks stay distinguishable.
    """
    tasks, eos = tokenisation.tasks, tokenizer.eos_token_id
    schema = training_token_schema(tokenisation.columns)
    parts = [schema.empty_table()]
    for batch in table.to_batches(max_chunksize=TOKENISE_BATCH):
        pairs = [(row, task_id, prompt, target) for row, row_pairs in enumerate(task_pairs(batch.to_pydict(), tasks))
                 for task_id, prompt, target in row_pairs]
        prompt_ids = _encode_prompts(tokenizer, [(tasks[t].prefix, p) for _, t, p, _ in pairs],
                                     tokenisation.max_input_tokens)
        target_ids = [ids[:tokenisation.max_target_tokens - 1] + [eos]
                      for ids in _encode(tokenizer, [target for _, _, _, target in pairs])]
        columns: dict[str, list[Any]] = {name: [None] * batch.num_rows for name in schema.names[1:]}
        for (row, task_id, _, _), source, target in zip(pairs, prompt_ids, target_ids):
            columns[prompt_ids_column(tasks[task_id].column)][row] = source
            columns[target_ids_column(tasks[task_id].column)][row] = target
        arrays = [batch.column("id")] + [pa.array(columns[name], schema.field(name).type) for name in schema.names[1:]]
        parts.append(pa.Table.from_arrays(arrays, schema=schema))
    return pa.concat_tables(parts)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """``tokenizer.encode(text, add_special_tokens=False)`` of every text, in one batched call."""
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []


def _encode_prompts(tokenizer, prompts_with_prefix: list[tuple[str, str]], max_input_tokens: int) -> list[list[int]]:
    """Each (task prefix, prompt) as its prompt's ids; a prompt longer than ``max_input_tokens`` as the prefix's ids
    and the last ids of the rest of the prompt."""
    encoded = _encode(tokenizer, [prompt for _, prompt in prompts_with_prefix])
    for index, ids in enumerate(encoded):
        if len(ids) > max_input_tokens:
            prefix, prompt = prompts_with_prefix[index]
            prefix_ids, rest = _encode(tokenizer, [prefix, prompt[len(prefix):]])
            encoded[index] = prefix_ids + rest[len(rest) - (max_input_tokens - len(prefix_ids)):]
    return encoded


# ---------------------------------------------------------------- collation in the Train worker

class Collator:
    """Pads and stacks a batch of token rows (the token schema's columns, as lists or numpy arrays, None where a
    task has no target) into tensors plus the task id of every sequence."""

    def __init__(self, tasks: Sequence[Task], seq2seq: bool, pad_token_id: int):
        self.tasks, self.seq2seq, self.pad = list(tasks), seq2seq, int(pad_token_id)

    def sequences(self, batch: Mapping[str, Sequence[Any]]) -> list[tuple[int, Any, Any]]:
        """(task id, prompt ids, target ids) for every task of every row that has a target, row by row."""
        columns = [(batch[prompt_ids_column(t.column)], batch[target_ids_column(t.column)]) for t in self.tasks]
        out = []
        for row in range(len(batch["id"])):
            for task_id, (sources, targets) in enumerate(columns):
                if targets[row] is not None:
                    out.append((task_id, sources[row], targets[row]))
        return out

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """One padded batch of every sequence of ``batch``."""
        return self.grouped(batch, max_groups=1)[0]

    def grouped(self, batch: Mapping[str, Sequence[Any]], max_groups: int) -> list[dict[str, Any]]:
        """The sequences of ``batch`` in up to ``max_groups`` padded batches of similar length (short answers
        apart from long rationales), chosen to pad as little as possible; one forward pass each."""
        sequences = self.sequences(batch)
        groups = length_groups([(len(s), len(t)) for _, s, t in sequences], self.seq2seq, max_groups)
        return [self._pad_group([sequences[i] for i in group]) for group in groups]

    def _pad_group(self, sequences: list[tuple[int, Any, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        from tinyllm_ray.losses import IGNORE_INDEX  # losses imports torch: only where tensors are made

        if self.seq2seq:
            input_ids, attention = _stack([s for _, s, _ in sequences], self.pad)
            labels, _ = _stack([t for _, _, t in sequences], IGNORE_INDEX)
        else:
            rows = [np.concatenate([np.asarray(s, np.int64), np.asarray(t, np.int64)]) for _, s, t in sequences]
            input_ids, attention = _stack(rows, self.pad)
            labels, _ = _stack([np.concatenate([np.full(len(s), IGNORE_INDEX, np.int64), np.asarray(t, np.int64)])
                                for _, s, t in sequences], IGNORE_INDEX)
        features = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        features = {k: torch.from_numpy(v) for k, v in features.items()}
        features["task_ids"] = torch.tensor([task_id for task_id, _, _ in sequences], dtype=torch.long)
        return features


def _stack(rows: Sequence[Any], value: int):
    """Rows of token ids padded with ``value`` to the longest into one int64 array, and its attention mask."""
    import numpy as np

    width = max((len(r) for r in rows), default=0)
    padded = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        padded[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return padded, mask


def padded_tokens(lengths: Sequence[tuple[int, int]], seq2seq: bool) -> int:
    """Tokens one padded batch of these (source, target) lengths computes on: a decoder-only batch pads source +
    target to the longest sum; seq2seq pads encoder and decoder inputs separately."""
    if not lengths:
        return 0
    if seq2seq:
        return len(lengths) * (max(s for s, _ in lengths) + max(t for _, t in lengths))
    return len(lengths) * max(s + t for s, t in lengths)


def length_groups(lengths: Sequence[tuple[int, int]], seq2seq: bool, max_groups: int) -> list[list[int]]:
    """Split sequence indices into at most ``max_groups`` groups, contiguous in order of total length, that
    minimise the padded tokens (exact over such splits: dynamic programming, n is a micro-batch's sequences)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0] + lengths[i][1], i))
    n = len(order)
    if n == 0:
        return []
    groups = max(1, min(max_groups, n))

    # cost[lo][hi]: padded tokens of order[lo:hi] as one batch (running maxima: O(n^2) in all)
    cost = [[0] * (n + 1) for _ in range(n + 1)]
    for lo in range(n):
        longest_source = longest_target = longest_sum = 0
        for hi in range(lo + 1, n + 1):
            source, target = lengths[order[hi - 1]]
            longest_source, longest_target = max(longest_source, source), max(longest_target, target)
            longest_sum = max(longest_sum, source + target)
            cost[lo][hi] = (hi - lo) * (longest_source + longest_target if seq2seq else longest_sum)

    # best[k][j]: least padded tokens for the first j sequences in k groups; cut[k][j]: where the last one starts
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(groups + 1)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = 0
    for k in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                candidate = best[k - 1][i] + cost[i][j]
                if candidate < best[k][j]:
                    best[k][j], cut[k][j] = candidate, i
    k = min(range(1, groups + 1), key=lambda g: (best[g][n], g))  # fewest groups among the cheapest
    bounds, j = [], n
    while k > 0:
        i = cut[k][j]
        bounds.append((i, j))
        j, k = i, k - 1
    return [order[lo:hi] for lo, hi in reversed(bounds)]
