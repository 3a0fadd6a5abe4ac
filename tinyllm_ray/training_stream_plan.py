"""The plan of the streamed training set (:mod:`tinyllm_ray.training_stream`). Pure: numpy and pyarrow, no Ray.

The training set is built as a hash join in buckets so that no process holds a whole split: every problem and every
teacher row goes to the bucket of its id's seeded order key, each bucket is joined on its own with
:func:`training_data.build_training_table`, and the buckets, in key order, are the training stream. The key is a
seeded hash of the id, so the order is a fixed shuffle: every build (every attempt of a run, a re-run after the
driver died) streams the same rows in the same order, which resuming relies on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA
from tinyllm_ray.training_data import COUNT_KEYS, RATIONALE_COLUMNS

SCATTER_ROWS = 65_536  # rows one scatter task reads (whole row groups): its memory, not the split's
BUCKET_ROWS = 16_384  # problems per join bucket, about: what one join task holds, with their teachers' rows
KEY = "_key"  # a problem's order key (uint64) in the scattered pieces
POSITION = "_pos"  # a teacher row's position in the teacher's files (int64): "last row" wins among repeated ids

PIECE_PROBLEM_SCHEMA = pa.schema(list(PROBLEM_SCHEMA) + [pa.field(KEY, pa.uint64(), nullable=False)])
PIECE_RATIONALE_SCHEMA = pa.schema([RATIONALE_SCHEMA.field(name) for name in RATIONALE_COLUMNS]
                                   + [pa.field(POSITION, pa.int64(), nullable=False)])
SUMMARY_SCHEMA = pa.schema([pa.field("bucket", pa.int64(), nullable=False),
                            pa.field("rows", pa.int64(), nullable=False),
                            pa.field("counts", pa.string(), nullable=False)])  # JSON {teacher: {outcome: n}}


def order_keys(ids: Iterable[str], seed: int) -> list[int]:
    """A seeded 64-bit hash of each id: the training order (ascending key, ties by id) is a fixed shuffle per seed,
    independent of where a problem sits in its file."""
    salt = int(seed).to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8, key=salt).digest(), "little")
            for i in ids]


def bucket_count(problems: int, bucket_rows: int = BUCKET_ROWS) -> int:
    return max(1, -(-problems // bucket_rows))


def buckets_of(keys: Sequence[int], buckets: int) -> list[int]:
    """Bucket ``key * buckets / 2**64``: monotone in the key, so the buckets in order, each sorted by key, are the
    whole set sorted by key."""
    return [(key * buckets) >> 64 for key in keys]


def training_rows(problems: int, fraction: float) -> int:
    """Rows of the training set: one per problem kept by ``training.data_fraction`` (as :func:`take_fraction`)."""
    return problems if fraction >= 1.0 or problems == 0 else max(1, round(problems * fraction))


def kept_positions(problems: int, fraction: float, seed: int, start: int, count: int):
    """Which of rows ``start .. start+count`` of the frozen split ``training.data_fraction`` keeps, as indices from
    ``start``: the same seeded choice as :func:`training_data.take_fraction` over the whole split."""
    import numpy as np

    if fraction >= 1.0:
        return np.arange(count)
    chosen = np.random.default_rng(seed).permutation(problems)[:training_rows(problems, fraction)]
    chosen = chosen[(chosen >= start) & (chosen < start + count)]
    return np.sort(chosen) - start


@dataclass(frozen=True)
class ReadPiece:
    """Whole row groups of consecutive files of one source that one scatter task reads; ``start`` is the position
    of its first row among all rows of the source (the files in name order, as :func:`schemas.read_table`
    concatenates them)."""

    source: str  # "problems" or a teacher's name
    parts: tuple[tuple[str, tuple[int, ...]], ...]  # (file, its row groups), in order
    start: int
    rows: int

    def as_item(self) -> dict[str, Any]:
        """The piece as one JSON string: what a Ray Data row carries to the scatter task unchanged."""
        return {"piece": json.dumps({"source": self.source, "parts": self.parts, "start": self.start,
                                     "rows": self.rows})}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> "ReadPiece":
        data = json.loads(item["piece"])
        return cls(data["source"], tuple((str(path), tuple(int(g) for g in groups)) for path, groups in data["parts"]),
                   int(data["start"]), int(data["rows"]))


def read_plan(source: str, files: Sequence[tuple[str, Sequence[int]]], target_rows: int = SCATTER_ROWS
              ) -> list[ReadPiece]:
    """Split a source's files (each with its row groups' row counts, in order) into pieces of about
    ``target_rows`` rows, whole row groups each: many small files (generation's shards) share a piece, a large one
    (an imported file) is split between pieces."""
    pieces: list[ReadPiece] = []
    parts: list[tuple[str, list[int]]] = []
    start = piece_start = piece_rows = 0
    for path, groups in files:
        for index, rows in enumerate(groups):
            if piece_rows and piece_rows + rows > target_rows:
                pieces.append(_piece(source, parts, piece_start, piece_rows))
                parts, piece_start, piece_rows = [], start, 0
            if not parts or parts[-1][0] != path:
                parts.append((path, []))
            parts[-1][1].append(index)
            piece_rows += rows
            start += rows
    if parts:
        pieces.append(_piece(source, parts, piece_start, piece_rows))
    return pieces


def _piece(source: str, parts: list[tuple[str, list[int]]], start: int, rows: int) -> ReadPiece:
    return ReadPiece(source, tuple((path, tuple(groups)) for path, groups in parts), start, rows)


def merge_counts(parts: Iterable[Mapping[str, Mapping[str, int]]],
                 teachers: Sequence[str]) -> dict[str, dict[str, int]]:
    """The per-teacher outcome counts of the whole set: the sum of every bucket's (counts are per problem)."""
    total = {name: dict.fromkeys(COUNT_KEYS, 0) for name in teachers}
    for part in parts:
        for name, counts in part.items():
            for outcome, value in counts.items():
                total[name][outcome] += int(value)
    return total


def piece_dir(scratch: Path, source_index: int, bucket: int) -> Path:
    """Where scatter tasks put source ``source_index``'s rows of one bucket (0: the problems, m: teacher m)."""
    return scratch / f"source-{source_index:03d}" / f"bucket-{bucket:05d}"


def set_file(folder: Path, bucket: int) -> Path:
    """One bucket of the built training set; their name order is the training order."""
    return folder / f"part-{bucket:05d}.parquet"
