"""One table of malformed inputs: every one fails with its own error type, a message naming where the problem is
(file and row, or dotted config key) and a hint what to do, and leaves every file already on disk untouched."""

from __future__ import annotations

import copy
import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tinyllm_ray.config import ConfigError, DataConfig, load_config
from tinyllm_ray.data import DataError, load_problems
from tinyllm_ray.schemas import RATIONALE_SCHEMA, ArtifactError, read_table

Load = Callable[[], Any]

GOOD_ROWS = [
    {"id": "q1", "question": "What melts ice?", "choices": ["heat", "cold", "dark"], "answer": "heat"},
    {"id": "q2", "question": "What do fish breathe with?", "choices": ["lungs", "gills"], "answer": "gills"},
]


def rows(*changes: dict | None) -> list[dict]:
    """GOOD_ROWS with per-row changes; a key set to ... is removed."""
    out = []
    for row, change in zip(GOOD_ROWS, changes + (None,) * (len(GOOD_ROWS) - len(changes))):
        row = {**row, **(change or {})}
        out.append({k: v for k, v in row.items() if v is not ...})
    return out


# ---------------------------------------------------------------- datasets

def dataset(fmt: str, content: list[dict] | str | bytes, **data: Any) -> Callable[[Path], Load]:
    """Write ``content`` (records, or raw text/bytes) as ``bad.<fmt>``; load its train split."""
    def setup(folder: Path) -> Load:
        file = folder / f"bad.{fmt}"
        if isinstance(content, bytes):
            file.write_bytes(content)
        elif isinstance(content, str):
            file.write_text(content)
        elif fmt == "jsonl":
            file.write_text("".join(json.dumps(r) + "\n" for r in content))
        elif fmt == "json":
            file.write_text(json.dumps(content, indent=1))
        elif fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(content), file)
        else:  # csv, lists as JSON strings
            with open(file, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(content[0]))
                writer.writeheader()
                writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                                 for r in content)
        return lambda: load_problems(DataConfig(format=fmt, path=str(file), **data), "train")
    return setup


# ---------------------------------------------------------------- configs

BASE_CONFIG = {
    "name": "bad",
    "teachers": [
        {"name": "tiny_a", "model": "builtin:tiny-llama", "rationale_prefix": "explain: "},
        {"name": "tiny_b", "model": "builtin:tiny-llama", "rationale_prefix": "rationale: "},
    ],
    "student": {"model": "builtin:tiny-llama"},
}


def job(change: Callable[[dict], None] | str | None = None, overrides: tuple[str, ...] = ()) -> Callable[[Path], Load]:
    """Write ``job.yaml`` (BASE_CONFIG edited by ``change``, or raw YAML text); load it with ``overrides``."""
    def setup(folder: Path) -> Load:
        file = folder / "job.yaml"
        if isinstance(change, str):
            file.write_text(change)
        else:
            payload = copy.deepcopy(BASE_CONFIG)
            if change:
                change(payload)
            file.write_text(yaml.safe_dump(payload, sort_keys=False))
        return lambda: load_config(str(file), list(overrides))
    return setup


def training(**values: Any) -> Callable[[dict], None]:
    return lambda payload: payload.setdefault("training", {}).update(values)


# ---------------------------------------------------------------- rationale artifacts

def rationale_record(**changes: Any) -> dict:
    record = {"id": "q1", "dataset": "demo", "teacher": "tiny_a", "model": "m", "prompt": "p", "rationale": "r",
              "num_prompt_tokens": 3, "num_generated_tokens": 2, "finish_reason": "stop", "sampling_params": "{}",
              "error": None}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def artifact(*records: dict, raw: bytes | None = None, read_dir: bool = True) -> Callable[[Path], Load]:
    """A rationale folder holding a good ``shard-0.parquet`` and the bad ``shard-1.parquet``."""
    def setup(folder: Path) -> Load:
        shards = folder / "rationales" / "tiny_a"
        shards.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([rationale_record()], schema=RATIONALE_SCHEMA), shards / "shard-0.parquet")
        bad = shards / "shard-1.parquet"
        if raw is not None:
            bad.write_bytes(raw)
        else:
            pq.write_table(pa.Table.from_pylist(list(records)), bad)
        return lambda: read_table(shards if read_dir else bad, RATIONALE_SCHEMA)
    return setup


# ---------------------------------------------------------------- the table
# (id, setup, error type, where: regexes the message must contain, hint: regex for what to do)

CASES = [
    # datasets: one validator for every source format, rows named as the format counts them
    ("jsonl-missing-answer", dataset("jsonl", rows(None, {"answer": ...})), DataError,
     [r"bad\.jsonl, line 2", r"field 'answer' is missing or empty"], r"data\.fields\.answer"),
    ("csv-answer-not-a-choice", dataset("csv", rows(None, {"answer": "fire"})), DataError,
     [r"bad\.csv, row 2 \(line 3\)", r"answer 'fire' is not among the choices"], r"exact text or its letter"),
    ("json-empty-question", dataset("json", rows({"question": "  "})), DataError,
     [r"bad\.json, record 1", r"field 'question' is missing or empty"], r"data\.fields\.question"),
    ("parquet-empty-choices", dataset("parquet", rows(None, {"choices": []})), DataError,
     [r"bad\.parquet, row 2", r"'choices' is missing or has fewer than 2 options"], r"at least two options"),
    ("jsonl-one-choice", dataset("jsonl", rows({"choices": ["heat"]})), DataError,
     [r"bad\.jsonl, line 1", r"fewer than 2 options \(\['heat'\]\)"], r"at least two options"),
    ("jsonl-empty-option", dataset("jsonl", rows({"choices": ["heat", " "]})), DataError,
     [r"bad\.jsonl, line 1", r"option 2 of 'choices' is empty"], r"every option needs text"),
    ("jsonl-answer-repeated-among-options", dataset("jsonl", rows({"choices": ["heat", "heat", "cold"]})), DataError,
     [r"bad\.jsonl, line 1", r"'heat' appears more than once"], r"make every option distinct"),
    ("jsonl-duplicate-ids", dataset("jsonl", rows(None, {"id": "q1"})), DataError,
     [r"bad\.jsonl, line 2", r"id 'q1' repeats line 1"], r"ids must be unique"),
    ("csv-duplicate-ids", dataset("csv", rows(None, {"id": "q1"})), DataError,
     [r"bad\.csv, row 2 \(line 3\)", r"id 'q1' repeats row 1"], r"ids must be unique"),
    ("jsonl-bad-json", dataset("jsonl", json.dumps(GOOD_ROWS[0]) + '\n{"id": "q2", "question": \n'), DataError,
     [r"bad\.jsonl, line 2", r"not valid JSON"], r"each line must hold exactly one JSON object"),
    ("json-bad-json", dataset("json", '[\n {"id": "q1",\n  "question": }\n]'), DataError,
     [r"bad\.json, line 3", r"not valid JSON"], r"a JSON array of objects"),
    ("json-object-not-array", dataset("json", '{"id": "q1", "prompt": "What melts ice?"}'), DataError,
     [r"bad\.json, line 1", r"field 'question' is missing or empty", r"row keys: \['id', 'prompt'\]"],
     r"map the column with data\.fields\.question"),  # read as JSON Lines: one object is one row
    ("jsonl-row-not-an-object", dataset("jsonl", json.dumps(GOOD_ROWS[0]) + "\n[1, 2]\n"), DataError,
     [r"bad\.jsonl, line 2", r"expected an object, got list"], r"each row must be one record"),
    ("csv-bad-choices-list", dataset("csv", 'id,question,choices,answer\nq1,What?,"[""a"", ",a\n'), DataError,
     [r"bad\.csv, row 1 \(line 2\)", r"looks like a JSON list but does not parse"], r'\["option a", "option b"\]'),
    ("jsonl-answer-index-out-of-range", dataset("jsonl", rows({"answer": 0}, {"answer": 2}), answer_is_index=True), DataError,
     [r"bad\.jsonl, line 2", r"answer index 2 is out of range for 2 options"], r"use 0\.\.n-1"),
    ("jsonl-answer-index-not-a-number", dataset("jsonl", rows(), answer_is_index=True), DataError,
     [r"bad\.jsonl, line 1", r"answer 'heat' is not a 0-based option index"], r"data\.answer_is_index=false"),
    ("jsonl-mapped-column-missing", dataset("jsonl", rows(), fields={"question": "prompt"}), DataError,
     [r"bad\.jsonl, line 1", r"field 'prompt' is missing or empty"], r"map the column with data\.fields\.question"),
    ("jsonl-mapped-context-missing", dataset("jsonl", rows(), fields={"context": "passage"}), DataError,
     [r"bad\.jsonl", r"no row has the context column 'passage'"], r"fix data\.fields\.context or set it to null"),
    ("parquet-not-parquet", dataset("parquet", b"PAR1 this is not parquet"), DataError,
     [r"bad\.parquet", r"not a readable Parquet file"], r"re-export it"),
    # configs: the file, the dotted key, what is expected
    ("config-unknown-key", job(training(epochz=2)), ConfigError,
     [r"job\.yaml", r"training\.epochz: unknown key"], r"check spelling"),
    ("config-unknown-nested-key", job(lambda p: p["teachers"][1].update(sampling={"temprature": 0.5})), ConfigError,
     [r"job\.yaml", r"teachers\.1\.sampling\.temprature: unknown key"], r"check spelling"),
    ("config-bad-type", job(training(num_workers="two")), ConfigError,
     [r"job\.yaml", r"training\.num_workers"], r"should be a valid integer"),
    ("config-bad-type-override", job(overrides=("training.rationale_filter.min_words=many",)), ConfigError,
     [r"job\.yaml", r"training\.rationale_filter\.min_words"], r"should be a valid integer"),
    ("config-negative-alpha", job(training(alpha={"tiny_a": -0.5})), ConfigError,
     [r"job\.yaml", r"training\.alpha", r"'tiny_a'"], r"must be >= 0"),
    ("config-alpha-unknown-teacher", job(training(alpha={"ghost": 1.0})), ConfigError,
     [r"job\.yaml", r"training\.alpha names unknown teachers \['ghost'\]"], r"known: \['tiny_a', 'tiny_b'\]"),
    ("config-duplicate-teacher-names", job(lambda p: p["teachers"][1].update(name="tiny_a")), ConfigError,
     [r"job\.yaml", r"teacher names must be unique"], r"repeated: \['tiny_a'\]"),
    ("config-override-without-equals", job(overrides=("training.epochs",)), ConfigError,
     [r"override 'training\.epochs'"], r"must look like key\.path=value"),
    ("config-override-unknown-list-item", job(overrides=("teachers.ghost.model=x",)), ConfigError,
     [r"override teachers\.ghost"], r"no list item named 'ghost'"),
    ("config-non-mapping-yaml", job("- tiny_a\n- tiny_b\n"), ConfigError,
     [r"job\.yaml"], r"top level must be a mapping, got list"),
    ("config-invalid-yaml", job("name: bad\nteachers: [\n  {name: a\n"), ConfigError,
     [r"job\.yaml", r"line \d+"], r"not valid YAML"),
    # rationale artifacts: the bad shard, the column, and how to get a good one back
    ("artifact-missing-column", artifact(rationale_record(finish_reason=...)), ArtifactError,
     [r"tiny_a/shard-1\.parquet", r"missing columns \['finish_reason'\]"], r"rerun the stage .* --force"),
    ("artifact-wrong-type", artifact(rationale_record(num_generated_tokens="many")), ArtifactError,
     [r"tiny_a/shard-1\.parquet", r"do not match the expected schema"], r"rerun the stage .* --force"),
    ("artifact-null-in-required-column", artifact(rationale_record(), rationale_record(id="q2", rationale=None)),
     ArtifactError, [r"tiny_a/shard-1\.parquet", r"column 'rationale' has null values"], r"rerun the stage .* --force"),
    ("artifact-single-file-null", artifact(rationale_record(teacher=None), read_dir=False),
     ArtifactError, [r"tiny_a/shard-1\.parquet", r"column 'teacher' has null values"], r"rerun the stage .* --force"),
    ("artifact-not-parquet", artifact(raw=b"not parquet at all"), ArtifactError,
     [r"tiny_a/shard-1\.parquet", r"not a readable Parquet file"], r"rerun the stage that wrote it \(`generate`"),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("setup, error, where, hint", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_fails_clearly_and_loses_nothing(tmp_path, setup, error, where, hint):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "previous.parquet"
    pq.write_table(pa.Table.from_pylist([rationale_record()], schema=RATIONALE_SCHEMA), existing)
    (out / "manifest.json").write_text('{"counts": {"rows": 1}}')
    before_output = existing.read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    load = setup(folder)
    before = snapshot(tmp_path)

    with pytest.raises(error) as info:
        load()

    assert type(info.value) is error  # the specific class, not just some ValueError
    message = str(info.value)
    for pattern in where:
        assert re.search(pattern, message), f"message does not name {pattern!r}: {message}"
    assert re.search(hint, message), f"message gives no hint matching {hint!r}: {message}"
    assert existing.read_bytes() == before_output  # nothing lost
    assert snapshot(tmp_path) == before  # inputs untouched, nothing new written


def test_case_ids_are_unique_and_cover_every_family():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert {case[2] for case in CASES} == {DataError, ConfigError, ArtifactError}
