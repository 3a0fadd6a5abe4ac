"""Problem records written as jsonl / json / parquet / csv files, for the readers' tests (one writer for all)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def flatten(record: dict, prefix: str = "") -> dict:
    """A nested record as a CSV row: nested keys joined by dots, lists as JSON strings."""
    row = {}
    for key, value in record.items():
        if isinstance(value, dict):
            row.update(flatten(value, f"{prefix}{key}."))
        else:
            row[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return row


def write(path: Path, fmt: str, records: list[dict]) -> Path:
    """``records`` as one ``fmt`` file at ``path`` (csv: flattened by :func:`flatten`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records, indent=2))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        rows = [flatten(r) for r in records]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path
