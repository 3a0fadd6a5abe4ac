"""Find a problem's fields in one source record as ``data.fields`` maps them: dotted paths into nested records,
options spread over one column each, and answers given as an option's label. Pure; every reader shares it, so a
bad row fails the same way whatever the format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

from .config import FieldMapping
from .errors import TinyLLMError

Fail = Callable[..., NoReturn]  # fail(what, fix): raises the reader's DataError naming the file and row
_LETTER = re.compile(r"\(?([A-Za-z])\)?")
_MISSING = object()


class DataError(TinyLLMError, ValueError):
    """Input data is malformed; the message names the file, the row and what to do about it."""


def lookup(record: dict[str, Any], path: str) -> Any:
    """The value at ``path`` ("question.stem"), or ``None``; a key spelled with the dots wins (flattened tables).
    Through a list of records the rest of the path is taken from each: ARC's original ``question.choices`` is
    ``[{"text": ..., "label": "A"}, ...]``, so ``question.choices.text`` is the list of option texts. A path into
    a cell holding JSON text (CSV) goes into the parsed JSON."""
    value = _walk(record, path)
    return None if value is _MISSING else value


def has_path(record: dict[str, Any], path: str) -> bool:
    return _walk(record, path) is not _MISSING


def _walk(node: Any, path: str) -> Any:
    """The longest dotted prefix that is a key wins at each level, so a flattened CSV header such as
    ``question.choices`` (holding JSON) still leads on to ``question.choices.text``."""
    node = _parsed(node)
    keys = path.split(".")
    if isinstance(node, dict):
        for cut in range(len(keys), 0, -1):
            head = ".".join(keys[:cut])
            if head in node:
                return node[head] if cut == len(keys) else _walk(node[head], ".".join(keys[cut:]))
        return _MISSING
    if _is_records(node) and all(keys[0] in item for item in node):
        items = [item[keys[0]] for item in node]
        return items if len(keys) == 1 else _walk(items, ".".join(keys[1:])) if _is_records(items) else _MISSING
    return _MISSING


def _parsed(node: Any) -> Any:
    """A CSV cell with a JSON object or list in it, parsed, so paths reach inside as they do in JSON and Parquet."""
    if isinstance(node, str) and node.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(node)
        except json.JSONDecodeError:
            return node
    return node


def _is_records(node: Any) -> bool:
    return isinstance(node, list) and bool(node) and all(isinstance(item, dict) for item in node)


def where_missing(record: dict[str, Any], path: str) -> str:
    """Why ``path`` finds nothing, as a hint naming the keys that do exist where the walk stopped."""
    if path in record or "." not in path:
        return f"row keys: {sorted(record)}"
    node: Any = record
    walked: list[str] = []
    for key in path.split("."):
        node = _parsed(node)
        if _is_records(node):
            if not all(key in item for item in node):
                keys = sorted({k for item in node for k in item})
                return f"{'.'.join(walked)!r} holds records with keys {keys}; {key!r} is not in every one"
            walked.append(key)
            parent, node = node[0], [item[key] for item in node]
            continue
        if not isinstance(node, dict):
            return f"{'.'.join(walked)!r} holds a {type(node).__name__}, not a record"
        if key not in node:
            break
        walked.append(key)
        parent, node = node, node[key]
    else:  # the path exists but holds nothing (a null in a Parquet struct)
        node = parent
        walked.pop()
    return f"{'.'.join(walked)!r} has {sorted(node)}" if walked else f"row keys: {sorted(node)}"


def text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else "" if value is None else str(value).strip()


def field_text(record: dict[str, Any], path: str, key: str, fail: Fail) -> str:
    """The text at ``path`` for ``data.fields.<key>``; a record or list there fails rather than being written out
    as its Python repr (the default ``question`` on ARC's nested rows would otherwise "work")."""
    value = lookup(record, path)
    if isinstance(value, dict):
        inner = next((k for k, v in value.items() if isinstance(v, str)), next(iter(value), "KEY"))
        fail(f"field {path!r} holds a record with keys {sorted(value)}, not text",
             f"map the text inside it, e.g. data.fields.{key}={path}.{inner}")
    if isinstance(value, (list, tuple)):
        fail(f"field {path!r} holds a list ({str(value)[:80]}), not text", f"point data.fields.{key} at a text field")
    return text(value)


def question_of(record: dict[str, Any], fields: FieldMapping, fail: Fail) -> str:
    question = field_text(record, fields.question, "question", fail)
    if not question:
        fail(f"field {fields.question!r} is missing or empty",
             "give every row a question or map the column with data.fields.question "
             f"({where_missing(record, fields.question)})")
    return question


def choices_of(record: dict[str, Any], fields: FieldMapping, fail: Fail) -> list[str]:
    """The options: from one column (a list, or from CSV a JSON list string or "a|b|c"), or one column each."""
    if isinstance(fields.choices, list):
        return _spread_choices(record, fields.choices, fail)
    column = fields.choices
    raw = lookup(record, column)
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.startswith("["):
            try:
                raw = json.loads(stripped)
            except json.JSONDecodeError:
                fail(f"field {column!r} looks like a JSON list but does not parse: {stripped[:80]!r}",
                     'write it as ["option a", "option b"] or as "option a|option b"')
        else:
            raw = stripped.split("|") if stripped else []
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        hint = where_missing(record, column) if raw is None else f"row keys: {sorted(record)}"
        fail(f"field {column!r} is missing or has fewer than 2 options ({raw!r})",
             f"give every row at least two options or map them with data.fields.choices ({hint})")
    choices = [text(c) for c in raw]
    if not all(choices):
        fail(f"option {choices.index('') + 1} of {column!r} is empty ({choices})", "every option needs text")
    return choices


def _spread_choices(record: dict[str, Any], columns: list[str], fail: Fail) -> list[str]:
    """One option per column; empty trailing columns mean this row has fewer options (a 5-column file with some
    4-option rows), while a gap before a filled column would shift the letters, so it fails."""
    absent = [c for c in columns if not has_path(record, c)]
    if absent:
        fail(f"option columns {absent} of data.fields.choices are missing", f"{where_missing(record, absent[0])}")
    choices = [text(lookup(record, c)) for c in columns]
    while choices and not choices[-1]:
        choices.pop()
    if len(choices) < 2:
        fail(f"fewer than 2 of the option columns {columns} are filled ({choices})",
             "give every row at least two options")
    if not all(choices):
        fail(f"option column {columns[choices.index('')]!r} is empty before a filled one ({choices})",
             "fill it, or move the options up so the empty ones come last")
    return choices


def labels_of(record: dict[str, Any], fields: FieldMapping, choices: list[str], fail: Fail) -> list[str] | None:
    """The options' labels when ``data.fields.labels`` is set: one distinct label per option."""
    if not fields.labels:
        return None
    raw = lookup(record, fields.labels)
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            pass  # reported as not a list just below
    if not isinstance(raw, (list, tuple)):
        hint = where_missing(record, fields.labels) if raw is None else f"it holds {raw!r}"
        fail(f"labels field {fields.labels!r} is missing or not a list", f"map it with data.fields.labels ({hint})")
    labels = [text(label) for label in raw]
    if len(labels) != len(choices):
        fail(f"{len(labels)} labels {labels} for {len(choices)} options {choices}", "give every option one label")
    if len(set(labels)) != len(labels) or not all(labels):
        fail(f"labels {labels} are empty or repeat", "give every option its own label")
    return labels


def answer_index(record: dict[str, Any], fields: FieldMapping, choices: list[str], labels: list[str] | None,
                 is_index: bool, fail: Fail) -> int:
    """A label (with ``data.fields.labels``), else option text, else a letter such as "b" or "(b)"; or a 0-based
    index when ``data.answer_is_index``."""
    column = fields.answer
    raw = lookup(record, column)
    answer = field_text(record, column, "answer", fail)
    if not answer:
        fail(f"field {column!r} is missing or empty",
             f"give every row its gold answer or map it with data.fields.answer ({where_missing(record, column)})")
    if is_index:
        if isinstance(raw, bool) or not re.fullmatch(r"\d+(\.0*)?", answer):
            fail(f"answer {raw!r} is not a 0-based option index", "set data.answer_is_index=false if it holds option text")
        index = int(float(answer))
        if index >= len(choices):
            fail(f"answer index {index} is out of range for {len(choices)} options (0-based)",
                 "use 0..n-1, or set data.answer_is_index=false")
        return index
    if labels is not None:
        if answer in labels:
            return labels.index(answer)
        if answer in choices:
            return choices.index(answer)
        fail(f"answer {answer!r} is neither a label {labels} nor an option {choices}",
             "check data.fields.answer and data.fields.labels")
    if answer in choices:
        return choices.index(answer)
    letter = _LETTER.fullmatch(answer)
    if letter and ord(letter.group(1).lower()) - ord("a") < len(choices):
        return ord(letter.group(1).lower()) - ord("a")
    fail(f"answer {answer!r} is not among the choices {choices}",
         "use one option's exact text or its letter, map labels with data.fields.labels, "
         "or set data.answer_is_index=true for 0-based indices")
