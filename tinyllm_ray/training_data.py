"""The multi-task training set and its tokenisation. Pure: pyarrow in, plain tensors out; no Ray, no DeepSpeed
(torch only where tensors are made, so the training plan imports this without torch).

One training row per problem holds the student input, the gold answer and one rationale per distilled teacher
(null when that teacher's row failed or is filtered). Collation expands a row into 1 + M sequences:
``task_prefix + input -> answer`` and ``rationale_prefix_m + input -> rationale_m``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tinyllm_ray import prompts, quality
from tinyllm_ray.schemas import training_schema


@dataclass(frozen=True)
class Task:
    name: str  # "answer" or the teacher name
    prefix: str
    column: str
    weight: float


def tasks_for(task_prefix: str, answer_weight: float, teachers: Sequence[tuple[str, str, float]]) -> list[Task]:
    """Task 0 is the answer; task m is teacher m (name, rationale prefix, alpha)."""
    return [Task("answer", task_prefix, "answer", answer_weight)] + [
        Task(name, prefix, f"rationale__{name}", alpha) for name, prefix, alpha in teachers
    ]


def take_fraction(problems: pa.Table, fraction: float, seed: int) -> pa.Table:
    """A seeded random ``fraction`` of the problems (at least one), in their original order. Smaller fractions are
    subsets of larger ones with the same seed, so a data-size sweep adds problems rather than swapping them."""
    import numpy as np

    if fraction >= 1.0:
        return problems
    keep = max(1, round(problems.num_rows * fraction))
    chosen = np.sort(np.random.default_rng(seed).permutation(problems.num_rows)[:keep])
    return problems.take(chosen)


def usable_rationale(row: Mapping[str, Any]) -> bool:
    return not row.get("error") and bool(str(row.get("rationale") or "").strip())


RATIONALE_COLUMNS = ("id", "rationale", "error", "finish_reason")  # what build_training_table reads of a teacher's rows
BUILD_BATCH = 8192  # problems held as Python rows at once while the training table is built
COUNT_KEYS = ("usable", "missing", "failed") + tuple(f"dropped_{reason}" for reason in quality.DROP_REASONS)


def build_training_table(problems: pa.Table, rationales: Mapping[str, pa.Table],
                         rationale_filter: Any = None) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """Join problems with each teacher's rationales by id; returns the table and per-teacher counts.

    A teacher's target for a problem is null when its row is missing, failed (``error``), blank, or, with a
    ``rationale_filter`` (``config.RationaleFilter``), dropped by it (:func:`quality.drop_reason`); the
    answer task always stays. Counts per teacher, over the problems, add up to the number of problems:
    ``usable``, ``missing``, ``failed`` and one ``dropped_<reason>`` per :data:`quality.DROP_REASONS`
    (a rationale with several flags counts once, under the first reason in that order).
    """
    counts = {name: dict.fromkeys(COUNT_KEYS, 0) for name in rationales}
    # Where each problem's row is in each teacher's table: Arrow lookups, so the driver holds Python rows for one
    # batch of problems at a time, not for every teacher's whole split.
    tables = {name: _one_row_per_id(table) for name, table in rationales.items()}
    positions = {name: pc.index_in(problems.column("id"), value_set=table.column("id"))
                 for name, table in tables.items()}
    schema = training_schema(list(rationales))
    parts = [schema.empty_table()]
    start = 0
    for batch in problems.to_batches(max_chunksize=BUILD_BATCH):  # Python objects for one batch of problems at a time
        rows_by_teacher = {name: _rows_at(tables[name], positions[name].slice(start, batch.num_rows))
                           for name in tables}
        start += batch.num_rows
        records = []
        for i, problem in enumerate(batch.to_pylist()):
            record = {"id": problem["id"], "input": prompts.student_input(problem), "answer": problem["answer"]}
            for name, rows in rows_by_teacher.items():
                outcome = _rationale_outcome(rows[i], problem, rationale_filter)
                counts[name][outcome] += 1
                record[f"rationale__{name}"] = rows[i]["rationale"].strip() if outcome == "usable" else None
            records.append(record)
        parts.append(pa.Table.from_pylist(records, schema=schema))
    return pa.concat_tables(parts), counts


def _one_row_per_id(table: pa.Table) -> pa.Table:
    """A teacher's rows with each id once. Written shards hold each id once; a repeated id (files edited or merged
    by hand) keeps its last usable row, or else its last row."""
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return table
    best: dict[str, tuple[bool, int]] = {}
    for index, row in enumerate(table.to_pylist()):
        best[row["id"]] = max(best.get(row["id"], (False, -1)), (usable_rationale(row), index))
    return table.take(sorted(index for _, index in best.values()))


def _rows_at(table: pa.Table, positions: pa.Array) -> list[dict[str, Any] | None]:
    """The rows at ``positions`` (None where a position is null: the teacher has no row for that problem)."""
    rows = table.take(positions).to_pylist()
    return [row if position.is_valid else None for row, position in zip(rows, positions)]


def _rationale_outcome(row: Mapping[str, Any] | None, problem: Mapping[str, Any], rationale_filter: Any) -> str:
    """``usable``, ``missing``, ``failed`` or ``dropped_<reason>`` for one teacher row of one problem."""
    if row is None:
        return "missing"
    if row.get("error"):
        return "failed"
    if not usable_rationale(row):
        return "dropped_empty"  # never trainable, whatever the filter says
    if rationale_filter is None:
        return "usable"
    reason = quality.drop_reason(row["rationale"], row.get("finish_reason") or "", int(problem["answer_index"]),
                                 list(problem["choices"]), rationale_filter)
    return "usable" if reason is None else f"dropped_{reason}"


def micro_batches(batches: Iterable[Mapping[str, Sequence[Any]]], size: int) -> Iterator[dict[str, Sequence[Any]]]:
    """Split column batches (every one but the last a multiple of ``size`` rows long) into micro-batches of ``size``
    rows, in order, dropping a last partial one: what ``iter_batches(batch_size=size, drop_last=True)`` yields."""
    for batch in batches:
        rows = len(next(iter(batch.values()), ()))
        for start in range(0, rows - size + 1, size):
            yield {key: column[start:start + size] for key, column in batch.items()}


class Collator:
    """Tokenises a batch of training rows into padded tensors plus the task id of every sequence."""

    def __init__(self, tokenizer, tasks: Sequence[Task], seq2seq: bool, max_input_tokens: int, max_target_tokens: int):
        self.tokenizer, self.tasks, self.seq2seq = tokenizer, list(tasks), seq2seq
        self.max_input_tokens, self.max_target_tokens = max_input_tokens, max_target_tokens
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def pairs(self, batch: Mapping[str, Sequence[Any]]) -> list[tuple[int, str, str]]:
        """(task id, prompt, target) for every available task of every row."""
        out = []
        for i, problem_input in enumerate(batch["input"]):
            for task_id, task in enumerate(self.tasks):
                target = batch[task.column][i] if task.column in batch else None
                if target is None or (isinstance(target, str) and not target.strip()):
                    continue
                out.append((task_id, prompts.student_prompt(task.prefix, str(problem_input)), str(target)))
        return out

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """One padded batch of every sequence of ``batch``."""
        return self.grouped(batch, max_groups=1)[0]

    def grouped(self, batch: Mapping[str, Sequence[Any]], max_groups: int) -> list[dict[str, Any]]:
        """The sequences of ``batch`` in up to ``max_groups`` padded batches of similar length (short answers
        apart from long rationales), chosen to pad as little as possible; one forward pass each."""
        pairs = self.pairs(batch)
        eos = [self.tokenizer.eos_token_id]
        sources = [self._encode_prompt(task_id, prompt) for task_id, prompt, _ in pairs]
        targets = [self._encode(t)[: self.max_target_tokens - 1] + eos for _, _, t in pairs]
        task_ids = [task_id for task_id, _, _ in pairs]
        groups = length_groups([(len(s), len(t)) for s, t in zip(sources, targets)], self.seq2seq, max_groups)
        return [self._pad_group([sources[i] for i in g], [targets[i] for i in g], [task_ids[i] for i in g])
                for g in groups]

    def _pad_group(self, sources: list[list[int]], targets: list[list[int]], task_ids: list[int]) -> dict[str, Any]:
        import torch

        from tinyllm_ray.losses import IGNORE_INDEX  # losses imports torch: only where tensors are made

        pad = self.tokenizer.pad_token_id
        if self.seq2seq:
            input_ids, attention = _pad(sources, pad)
            labels, _ = _pad(targets, IGNORE_INDEX)
        else:
            input_ids, attention = _pad([s + t for s, t in zip(sources, targets)], pad)
            labels, _ = _pad([[IGNORE_INDEX] * len(s) + t for s, t in zip(sources, targets)], IGNORE_INDEX)
        features = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        features = {k: torch.tensor(v) for k, v in features.items()}
        features["task_ids"] = torch.tensor(task_ids)
        return features

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_prompt(self, task_id: int, prompt: str) -> list[int]:
        """The prompt as evaluation tokenises it; when too long, the task prefix plus the END of the input
        (the question and options follow a PubMedQA-style context), so tasks stay distinguishable."""
        ids = self._encode(prompt)
        if len(ids) <= self.max_input_tokens:
            return ids
        prefix = self.tasks[task_id].prefix
        prefix_ids = self._encode(prefix)
        rest = self._encode(prompt[len(prefix):])
        return prefix_ids + rest[len(rest) - (self.max_input_tokens - len(prefix_ids)):]


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


def _pad(rows: list[list[int]], value: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max((len(r) for r in rows), default=0)
    padded = [r + [value] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    return padded, mask
