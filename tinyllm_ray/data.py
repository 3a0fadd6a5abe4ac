"""Load multiple-choice problems from disk into the canonical ``PROBLEM_SCHEMA`` table. Pure pyarrow; no Ray.

Every source (the embedded demo set, the TinyLLM repository layout, JSON / JSON Lines / Parquet / CSV files, a
Hugging Face dataset) goes through one row validator and one field mapping (:mod:`tinyllm_ray.data_fields`), so a
bad row fails the same way everywhere: a ``DataError`` naming the file, the row and what to change. Nothing is
dropped silently; the only tolerated oddity is a repeated *wrong* option (the real OBQA train split has three),
which is kept with a warning because it leaves the gold answer unambiguous.
"""

from __future__ import annotations

import csv
import itertools
import json
import warnings
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from .config import DataConfig, FieldMapping
from .data_fields import DataError  # noqa: F401 - re-exported, the one import path for readers' errors
from .data_fields import answer_index, choices_of, field_text, has_path, labels_of, lookup, question_of
from .schemas import PROBLEM_SCHEMA, conform

DEMO_SPLITS = ("train", "valid")
TINYLLM_TEACHERS = ("flan_t5_xl", "llama2_7b")  # order inside each TinyLLM CoT string
TINYLLM_SEPARATOR = " llama rationale: "
TINYLLM_CHUNK = 500  # rows per llm/{split}_CoT_<k>.json file
TEMPLATE_WORDS = (
    "Question:", "Options:", "Answer:", "Rationale:", "Let's think step by step.", "Answer Choices:",
    "predict: ", "explain: ", "rationale: ", "(a)", "(b)", "(c)", "(d)", "(e)", "Thus, the answer is",
)

Row = tuple[str, Any]  # (where in the file, e.g. "line 3", the parsed record)


# ---------------------------------------------------------------- public API

def load_problems(config: DataConfig, split: str) -> pa.Table:
    """Read one split as a ``PROBLEM_SCHEMA`` table, validated row by row, limited per ``config.max_*`` (rows past
    the limit are not read). Rows stream through in batches: memory holds the Arrow table, not every row parsed."""
    limits = [n for name, n in ((config.train_split, config.max_train_problems),
                                (config.eval_split, config.max_eval_problems)) if name == split and n]
    limit = min(limits) if limits else None
    if config.format == "demo":
        folder = resources.files("tinyllm_ray") / "demo_data"
        if split not in DEMO_SPLITS:
            raise DataError(f"the demo dataset has splits {list(DEMO_SPLITS)}, not {split!r}; set data.train_split/eval_split")
        name = f"demo_{split}.jsonl"
        rows = json_rows(folder.joinpath(name).read_text(encoding="utf-8"), f"tinyllm_ray/demo_data/{name}")
        return _build(rows, f"tinyllm_ray/demo_data/{name}", config.dataset, split, FieldMapping(), False, limit)
    if config.format == "tinyllm":
        file = tinyllm_file(Path(config.path), split)
        dataset = config.dataset if config.dataset != "demo" else Path(config.path).name
        return _build(json_rows(_read_text(file), str(file)), str(file), dataset, split, FieldMapping(), False, limit)
    if config.format == "hf":
        from .data_hf import describe, hf_rows, split_of

        where = f"{describe(config)} [{split}]"
        dataset = config.dataset if config.dataset != "demo" else _default_name(Path(config.path))
        return _build(hf_rows(split_of(config, split), limit), where, dataset, split, config.fields,
                      config.answer_is_index, limit)
    file = _split_file(Path(config.path.replace("{split}", split)), split, config.format)
    dataset = config.dataset if config.dataset != "demo" else _default_name(Path(config.path))
    return _build(read_records(file, config.format), str(file), dataset, split, config.fields, config.answer_is_index,
                  limit)


def load_tinyllm_rationales(dataset_dir: str | Path, split: str, cut: bool = True) -> dict[str, list[str]]:
    """The two TinyLLM teachers' rationales for ``split``, position i = row i of ``<ds>_{split}.json``.

    The FLAN-T5 text often runs on into a question the model made up; with ``cut`` it ends after its answer
    statement (:func:`tinyllm_ray.quality.cut_after_answer`). A LLaMA output stored as the text "nan" (a pandas
    NaN) becomes "": no rationale, for the caller to treat as missing.
    """
    dataset_dir = Path(dataset_dir)
    from .quality import cut_after_answer

    problems = tinyllm_file(dataset_dir, split)
    count = sum(1 for _ in json_rows(_read_text(problems), str(problems)))
    llm = dataset_dir / "llm"
    files = sorted(llm.glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    expected = [llm / f"{split}_CoT_{k}.json" for k in range(max(1, -(-count // TINYLLM_CHUNK)))]
    if files != expected:
        raise DataError(f"{llm}: expected teacher files {[p.name for p in expected]} for the {count} {split} problems, "
                        f"found {[p.name for p in files]}; copy the complete llm/ folder of the TinyLLM dataset")
    out: dict[str, list[str]] = {name: [] for name in TINYLLM_TEACHERS}
    for file in files:
        texts = json.loads(_read_text(file))
        if not isinstance(texts, list):
            raise DataError(f"{file}: expected a JSON array of strings, got {type(texts).__name__}")
        for position, text in enumerate(texts, 1):
            if not isinstance(text, str) or TINYLLM_SEPARATOR not in text:
                raise DataError(f"{file}, record {position}: expected a string '<flan>{TINYLLM_SEPARATOR}<llama>'; "
                                f"got {str(text)[:80]!r}; regenerate or fix this teacher output")
            flan, llama = text.split(TINYLLM_SEPARATOR, 1)
            out["flan_t5_xl"].append(cut_after_answer(flan)[0] if cut else flan.strip())
            llama = llama.strip()
            out["llama2_7b"].append("" if llama == "nan" else llama)  # pandas NaN written as text
    if len(out["flan_t5_xl"]) != count:
        raise DataError(f"{llm}: {len(out['flan_t5_xl'])} {split} rationales for {count} problems; "
                        "the files must hold exactly one entry per problem, in file order")
    return out


def demo_corpus() -> Iterator[str]:
    """Text of the demo dataset plus the prompt template words: enough to train a tiny tokenizer offline."""
    folder = resources.files("tinyllm_ray") / "demo_data"
    for split in DEMO_SPLITS:
        for line in folder.joinpath(f"demo_{split}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                yield record["question"]
                yield from record["choices"]
                yield record["answer"]
    yield from TEMPLATE_WORDS


# ---------------------------------------------------------------- locating files

def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{file} does not exist; check data.path") from None


def tinyllm_file(folder: Path, split: str) -> Path:
    file = folder / f"{folder.name}_{split}.json"
    if not file.is_file():
        found = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else "(folder missing)"
        raise DataError(f"{file} not found; data.path must be a TinyLLM dataset folder holding "
                        f"<name>_{{train,valid,test}}.json (found {found})")
    return file


def _split_file(path: Path, split: str, ext: str) -> Path:
    """A file is used as given; a directory must hold ``{split}.{ext}`` or exactly one ``*_{split}.{ext}``."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path} does not exist; set data.path to a .{ext} file or a directory of {split}.{ext} files")
    candidates = [path / f"{split}.{ext}"] if (path / f"{split}.{ext}").is_file() else sorted(path.glob(f"*_{split}.{ext}"))
    if len(candidates) != 1:
        found = sorted(p.name for p in path.iterdir())
        raise DataError(f"{path}: need one file named {split}.{ext} or *_{split}.{ext} for split {split!r}, "
                        f"found {found}; rename the file or point data.path at it")
    return candidates[0]


def _default_name(path: Path) -> str:
    return (path.name if path.is_dir() else path.stem).replace("{split}", "").strip("_-.") or "data"


# ---------------------------------------------------------------- reading rows

def read_records(file: Path, fmt: str) -> Iterator[Row]:
    """The file's records one by one, read as they are consumed (a JSON array, by nature, is parsed whole)."""
    if fmt == "parquet":
        try:
            batches = pq.ParquetFile(file).iter_batches(batch_size=BUILD_BATCH)
            number = 0
            for batch in batches:
                for record in batch.to_pylist():
                    number += 1
                    yield f"row {number}", record
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: not a readable Parquet file ({err}); re-export it") from err
        return
    if fmt == "csv":
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for number, record in enumerate(reader, 1):
                yield f"row {number} (line {reader.line_num})", record
        return
    if fmt == "json" and _starts_with_bracket(file):
        yield from json_rows(_read_text(file), str(file), lines=False)
        return
    try:
        with open(file, encoding="utf-8") as handle:
            yield from json_rows(handle, str(file), lines=True)
    except FileNotFoundError:
        raise DataError(f"{file} does not exist; check data.path") from None


def _starts_with_bracket(file: Path) -> bool:
    """Whether a .json file holds one JSON array (else JSON Lines), from its first non-blank character."""
    try:
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    return line.lstrip().startswith("[")
    except FileNotFoundError:
        raise DataError(f"{file} does not exist; check data.path") from None
    return False


def json_rows(text: str | Iterable[str], where: str, lines: bool | None = None) -> Iterator[Row]:
    """JSON Lines (rows named by line; ``text`` may be an open file) or one JSON array (rows named by record);
    ``lines=None`` detects."""
    if lines is None:
        lines = not text.lstrip().startswith("[")
    if not lines:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                            "fix the file (a JSON array of objects)") from None
        if not isinstance(records, list):
            raise DataError(f"{where}: expected a JSON array of objects or JSON Lines, got a {type(records).__name__}")
        yield from ((f"record {n}", r) for n, r in enumerate(records, 1))
        return
    for n, line in enumerate(text.splitlines() if isinstance(text, str) else text, 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}, line {n}: not valid JSON ({err.msg}); "
                                "each line must hold exactly one JSON object") from None
            yield f"line {n}", record


# ---------------------------------------------------------------- validating rows

BUILD_BATCH = 8192  # rows held as Python objects at once while a split is validated


def _build(rows: Iterable[Row], file: str, dataset: str, split: str, fields: FieldMapping,
           answer_is_index: bool, limit: int | None = None) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in PROBLEM_SCHEMA.names}
    batches: list[pa.RecordBatch] = []
    seen_ids: dict[str, str] = {}
    repeated_options: list[str] = []
    context_found = False
    number = 0
    for number, (label, record) in enumerate(itertools.islice(rows, limit), 1):
        def fail(what: str, fix: str, label: str = label) -> NoReturn:
            raise DataError(f"{file}, {label}: {what}; {fix}")

        if not isinstance(record, dict):
            fail(f"expected an object, got {type(record).__name__}", "each row must be one record")
        question = question_of(record, fields, fail)
        choices = choices_of(record, fields, fail)
        index = answer_index(record, fields, choices, labels_of(record, fields, choices, fail), answer_is_index, fail)
        if len(set(choices)) != len(choices):
            if choices.count(choices[index]) > 1:
                fail(f"the answer {choices[index]!r} appears more than once in {choices}", "make every option distinct")
            repeated_options.append(label)
        raw_id = lookup(record, fields.id) if fields.id and field_text(record, fields.id, "id", fail) else None
        problem_id = f"{dataset}-{split}-{number}" if raw_id in (None, "") else str(raw_id)  # as written, unstripped
        if problem_id in seen_ids:
            fail(f"id {problem_id!r} repeats {seen_ids[problem_id]}", "ids must be unique within a split")
        seen_ids[problem_id] = label
        context = None
        if fields.context:
            context_found = context_found or has_path(record, fields.context)
            context = field_text(record, fields.context, "context", fail) or None
        for name, value in (("id", problem_id), ("dataset", dataset), ("split", split), ("question", question),
                            ("choices", choices), ("answer_index", index), ("answer", choices[index]),
                            ("context", context)):
            columns[name].append(value)
        if len(columns["id"]) == BUILD_BATCH:
            batches.append(_batch(columns, file))
    if number == 0:
        raise DataError(f"{file}: no problems for split {split!r}; the file is empty")
    if columns["id"]:
        batches.append(_batch(columns, file))
    if fields.context and not context_found:
        raise DataError(f"{file}: no row has the context column {fields.context!r}; fix data.fields.context or set it to null")
    if repeated_options:
        warnings.warn(f"{file}: {len(repeated_options)} rows repeat a wrong option ({', '.join(repeated_options[:5])}); "
                      "kept, since the answer is still unambiguous", stacklevel=3)
    return pa.Table.from_batches(batches, schema=PROBLEM_SCHEMA)


def _batch(columns: dict[str, list[Any]], file: str) -> pa.RecordBatch:
    """The validated rows so far as one Arrow batch; empties ``columns`` for the next."""
    table = conform(pa.Table.from_pydict(columns, schema=PROBLEM_SCHEMA), PROBLEM_SCHEMA, file)
    for values in columns.values():
        values.clear()
    return table.combine_chunks().to_batches()[0]
