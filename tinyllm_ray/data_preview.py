"""What `tinyllm-ray data show` prints: the problems as the job reads them and the count per split, so a wrong field
mapping shows at a glance. Pure: validated ``PROBLEM_SCHEMA`` tables in, text out."""

from __future__ import annotations

import pyarrow as pa

from .config import DataConfig

CONTEXT_CHARS = 300  # a PubMedQA abstract would drown the question and options


def mapping_line(config: DataConfig) -> str:
    if config.format in ("demo", "tinyllm"):
        return f"fields: fixed by data.format={config.format}"
    fields = config.fields.model_dump(exclude_none=True)
    if config.answer_is_index:
        fields["answer"] += " (0-based index)"
    return "fields: " + ", ".join(f"{key}={value}" for key, value in fields.items())


def counts_line(config: DataConfig, tables: dict[str, pa.Table], source_sizes: dict[str, int] | None) -> str:
    """Problems read per split, which role each plays and its limit; and for a Hugging Face source all its splits."""
    roles = {config.train_split: ("train", config.max_train_problems),
             config.eval_split: ("eval", config.max_eval_problems)}
    parts = []
    for split, table in tables.items():
        role, limit = roles[split] if split in roles else ("", None)
        notes = [f"data.{role}_split"] if role else []
        if config.train_split == config.eval_split == split:
            notes = ["data.train_split and data.eval_split: the same problems"]
        if limit:
            notes.append(f"max {limit}")
        parts.append(f"{split} {table.num_rows}" + (f" ({', '.join(notes)})" if notes else ""))
    line = "problems: " + ", ".join(parts)
    if source_sizes:
        line += "\nin the source: " + ", ".join(f"{name} {rows} rows" for name, rows in sorted(source_sizes.items()))
    return line


def render_problems(table: pa.Table, count: int) -> str:
    """The first ``count`` problems: id, question, context, lettered options with the gold one starred, answer."""
    blocks = []
    for number, row in enumerate(table.slice(0, count).to_pylist(), 1):
        lines = [f"[{number}] {row['id']}", row["question"]]
        if row["context"]:
            context = row["context"]
            lines.append("context: " + (context if len(context) <= CONTEXT_CHARS else context[:CONTEXT_CHARS] + "..."))
        for index, option in enumerate(row["choices"]):
            mark = "*" if index == row["answer_index"] else " "
            lines.append(f"{mark} ({chr(ord('a') + index)}) {option}")
        lines.append(f"answer: ({chr(ord('a') + row['answer_index'])}) {row['answer']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_preview(config: DataConfig, tables: dict[str, pa.Table], source_sizes: dict[str, int] | None,
                   count: int) -> str:
    first = next(iter(tables))
    shown = min(count, tables[first].num_rows)
    head = [f"data: {config.format} {config.path or '(embedded)'} as dataset {tables[first]['dataset'][0].as_py()!r}",
            mapping_line(config), counts_line(config, tables, source_sizes)]
    if shown:
        head += ["", f"{first}, first {shown} of {tables[first].num_rows}:", "", render_problems(tables[first], shown)]
    return "\n".join(head)
