"""The generate stage's plan, as plain data and file logic (no Ray, no vLLM): which outputs every teacher writes
(passes), whether each is reused, resumed or refused (fingerprints), how it is cut into shards, what each teacher
prompt's demonstrations are, and the counts that add up to a teacher's manifest.

A teacher's output folder holds ``_progress.json`` (fingerprint and shard size, written when generation starts),
one Parquet file per shard (its stats in the footer) and, last, ``manifest.json``; every name comes from
:class:`~tinyllm_ray.layout.RunLayout`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray import prompts
from tinyllm_ray.artifacts import StaleArtifactError, reusable
from tinyllm_ray.config import JobConfig, TeacherConfig, fingerprint_view, stable_hash
from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, ArtifactError, read_footer, read_rows, read_table

DEMO_POOL_ROLE = "train"  # teachers' in-context demonstrations come from the frozen train problems


class GenerationError(TinyLLMError, RuntimeError):
    """A teacher's generation failed as a whole (engine crash, too many failed rows, changed config)."""


# ---------------------------------------------------------------- passes: what every teacher writes

@dataclass(frozen=True)
class TeacherPass:
    """One output every teacher writes: rationales over the train split, or answers over the eval split. A teacher's
    passes share one actor pool, so an engine starts once however many outputs it makes."""

    role: str                  # the frozen problems split
    out_root: Path             # <out_root>/<teacher name>/ holds the shards and the manifest
    mode: str                  # rationale | answer
    max_tokens: int | None = None
    force: bool = False

    @property
    def stage(self) -> str:
        return "generate" if self.mode == "rationale" else "evaluate_teachers"

    def out_dir(self, teacher: str) -> Path:
        return self.out_root / teacher


def rationale_pass(layout: RunLayout, force: bool = False) -> TeacherPass:
    return TeacherPass("train", layout.rationales, "rationale", force=force)


def answer_pass(config: JobConfig, layout: RunLayout) -> TeacherPass:
    """Teachers asked without the gold answer, for their accuracy (independent of the student)."""
    return TeacherPass("eval", layout.teacher_answers, "answer", max_tokens=config.evaluation.max_new_tokens)


def sampling_dict(teacher: TeacherConfig, mode: str, max_tokens: int | None = None) -> dict[str, Any]:
    """The teacher's sampling for rationales; greedy for answers (teacher accuracy is measured deterministically).
    Empty for a kind of teacher that samples nothing (one without a ``sampling`` section)."""
    if getattr(teacher, "sampling", None) is None:
        return {}
    sampling = teacher.sampling.model_dump()
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
    if mode == "answer":
        sampling.update(temperature=0.0, top_p=1.0)
    return sampling


# ---------------------------------------------------------------- reuse: fingerprints and decisions

def teacher_fingerprint(config: JobConfig, teacher: TeacherConfig, problems_fingerprint: str, mode: str) -> str:
    """What a teacher's output depends on: the teacher's and the prompts' fields that config.py does not mark
    operational (resources, error budget, engine placement) or student-only (prefixes), the problems, the mode."""
    return stable_hash({"teacher": fingerprint_view(teacher), "prompts": fingerprint_view(config.prompts),
                        "problems": problems_fingerprint, "mode": mode})


def reuse(teacher: TeacherConfig, teacher_pass: TeacherPass, fingerprint: str) -> dict[str, Any] | None:
    """The finished manifest to reuse, or None to (re)run: partial output of the same fingerprint is resumed, a
    forced pass starts from an empty folder, and output of another config is refused (it would be mixed in)."""
    out_dir = teacher_pass.out_dir(teacher.name)
    if teacher_pass.force:
        shutil.rmtree(out_dir, ignore_errors=True)
        return None
    try:
        return reusable(out_dir, fingerprint, refuse="The teacher's model, prompt or sampling changed: rename the "
                                                     "teacher to keep both, or pass --force to regenerate it.")
    except StaleArtifactError as err:
        raise GenerationError(f"teacher {teacher.name!r}: {err}") from None


# ---------------------------------------------------------------- shards

@dataclass(frozen=True)
class ShardPlan:
    """Shard ``shard`` covers ``rows`` problems from row ``offset`` of its split."""

    shard: int
    offset: int
    rows: int


@dataclass(frozen=True)
class PassPlan:
    """One pass of one teacher, planned: its problems, its output folder and the shard layout recorded there."""

    teacher_pass: TeacherPass
    out_dir: Path
    fingerprint: str
    problems_path: Path
    num_problems: int
    shards: tuple[ShardPlan, ...]
    sampling: dict[str, Any]

    @property
    def in_demo_pool(self) -> bool:
        """The pass's problems are the demo pool itself (which actors hold in memory)."""
        return self.teacher_pass.role == DEMO_POOL_ROLE

    def shard_path(self, shard: int) -> Path:
        return RunLayout.shard_file(self.out_dir, shard)

    def pending(self) -> list[ShardPlan]:
        """The shards to write: those not yet on disk (each is written atomically, so a missing file was never
        finished), those damaged since (:meth:`unsound`), and those written with failed rows, whose failed rows a
        rerun asks for again (:func:`kept_rows`)."""
        return [s for s in self.shards if not self.shard_path(s.shard).is_file()
                or shard_problem(self.shard_path(s.shard), s.rows) or has_failed_rows(self.shard_path(s.shard))]

    def unsound(self) -> dict[int, str]:
        """The shards on disk that cannot be used, with why: unreadable, or another row count than planned (a file
        truncated, replaced or copied in by hand after it was written)."""
        problems = {}
        for s in self.shards:
            path = self.shard_path(s.shard)
            problem = shard_problem(path, s.rows) if path.is_file() else None
            if problem:
                problems[s.shard] = problem
        return problems


def shard_problem(shard_file: Path, rows: int | None = None) -> str | None:
    """Why a written shard cannot be used (its Parquet footer does not read, or it holds other than ``rows``
    rows), or None. Reads the footer only: cheap enough to check every shard of a reused teacher."""
    import pyarrow.parquet as pq

    try:
        found = pq.read_metadata(shard_file).num_rows
    except (pa.ArrowException, OSError) as err:
        return f"not a readable Parquet file ({err})"
    return None if rows is None or found == rows else f"{found} rows where its plan has {rows}"


def has_failed_rows(shard_file: Path) -> bool:
    """A written shard holds error rows (its footer's stats say so; files without a footer are read)."""
    import pyarrow.parquet as pq

    stats = read_footer(shard_file).get("stats")
    if stats is not None:
        return stats["errors"] > 0
    if "error" not in pq.read_schema(shard_file).names:
        return False  # not a rationale shard of this version: collect_shard_stats says what is wrong with it
    errors = pq.read_table(shard_file, columns=["error"]).column("error")
    return errors.null_count < len(errors)


def kept_rows(shard_file: Path) -> dict[str, dict[str, Any]]:
    """The rows that succeeded in an earlier write of a shard, by problem id (none for a shard not yet written):
    a rerun keeps them and asks the teacher for the failed rows only."""
    if not shard_file.is_file():
        return {}
    try:
        table = read_table(shard_file, RATIONALE_SCHEMA)
    except ArtifactError:
        return {}  # damaged since it was written: the whole shard is asked for again
    return {row["id"]: row for row in table.to_pylist() if not row["error"]}


def merge_rows(problems: list[dict[str, Any]], kept: dict[str, dict[str, Any]],
               fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A shard's rows in its problems' order: each kept row, else the next fresh one (fresh rows are the teacher's
    answers for the problems not kept, in order)."""
    remaining = iter(fresh)
    rows = [kept[p["id"]] if p["id"] in kept else next(remaining) for p in problems]
    if next(remaining, None) is not None:
        raise GenerationError("the teacher returned more rows than problems were asked")
    return rows


def lead_shard_sizes(shard_size: int) -> tuple[int, ...]:
    """The smaller shards a pass starts with: a quarter, a quarter and a half of ``shard_size``. The engine's first
    batch is then a fraction of a full one, so the first shards are written in a fraction of a full shard's time
    (start-up, benchmarks/RESULTS.md); the rest of the pass runs at full size. None under 4 problems a shard."""
    return () if shard_size < 4 else (shard_size // 4, shard_size // 4, shard_size // 2)


def plan_shards(num_problems: int, shard_size: int, lead: Sequence[int] = ()) -> list[ShardPlan]:
    """Consecutive shards over every problem once: first the ``lead`` sizes, then ``shard_size`` each (the last
    may be short); the layout is recorded so resumes keep it."""
    shards, offset = [], 0
    sizes = iter(lead)
    while offset < num_problems:
        rows = min(next(sizes, shard_size), num_problems - offset)
        shards.append(ShardPlan(len(shards), offset, rows))
        offset += rows
    return shards


def plan_pass(layout: RunLayout, teacher: TeacherConfig, teacher_pass: TeacherPass, fingerprint: str) -> PassPlan:
    """Plan a pass that is not reused, recording its shard layout when it starts (a resume reads it back, so the
    shards on disk keep their meaning whatever ``resources.shard_size`` says now; a layout recorded before lead
    shards existed has none)."""
    import pyarrow.parquet as pq

    out_dir = teacher_pass.out_dir(teacher.name)
    problems_path = layout.problem_file(teacher_pass.role)
    num_problems = pq.read_metadata(problems_path).num_rows
    progress_file = RunLayout.progress_file(out_dir)
    if progress_file.is_file():
        recorded = json.loads(progress_file.read_text())
        shard_size, lead = recorded["shard_size"], tuple(recorded.get("lead_shards", ()))
    else:
        shard_size = teacher.resources.shard_size
        lead = lead_shard_sizes(shard_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        progress_file.write_text(json.dumps({"fingerprint": fingerprint, "shard_size": shard_size,
                                             "lead_shards": list(lead)}))
    return PassPlan(teacher_pass, out_dir, fingerprint, problems_path, num_problems,
                    tuple(plan_shards(num_problems, shard_size, lead)),
                    sampling_dict(teacher, teacher_pass.mode, teacher_pass.max_tokens))


# ---------------------------------------------------------------- demonstrations

def demos_from_pool(pool: pa.Table, problems: list[dict], pool_offset: int | None, k: int, seed: int,
                    sampler: str = "per_problem") -> list[list[dict]]:
    """Each problem's k demonstrations from the Arrow ``pool`` (the train split), as :func:`prompts.sample_demos`
    picks them. ``pool_offset``: where ``problems`` start in the pool, or None for problems from another split."""
    demos = []
    for i, problem in enumerate(problems):
        own = None if pool_offset is None else pool_offset + i
        if own is not None and pool["id"][own].as_py() != problem["id"]:
            raise GenerationError(f"problem {problem['id']!r} is not at row {own} of the demo pool: the frozen "
                                  "problems changed during the run; rerun with --force")
        positions = prompts.demo_positions(len(pool), own, problem["id"], k, seed, sampler)
        # one-row slices: zero-copy and flat in the pool's size (Table.take concatenates its chunks first)
        demos.append([pool.slice(p, 1).to_pylist()[0] for p in positions])
    return demos


# ---------------------------------------------------------------- stats

def rationale_stats(rows: list[dict[str, Any]], problems_by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest and `inspect`: failures, quality flags (quality.py), token totals. Additive over
    shards (:func:`merge_stats`)."""
    from tinyllm_ray.quality import summarize_flags

    errors = [r["error"] for r in rows if r["error"]]
    flags = summarize_flags({**r, **{k: problems_by_id[r["id"]][k] for k in ("answer_index", "choices")}}
                            if r["id"] in problems_by_id else r for r in rows)
    return {
        "rows": len(rows),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        **{k: v for k, v in flags.items() if k != "checked"},
        "prompt_tokens": int(sum(r["num_prompt_tokens"] for r in rows)),
        "generated_tokens": int(sum(r["num_generated_tokens"] for r in rows)),
    }


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Shard stats in shard order -> the teacher's: counts add up, ``first_error`` is the first shard's."""
    merged: dict[str, Any] = {"first_error": None}
    for part in parts:
        for key, value in part.items():
            if key == "first_error":
                merged[key] = merged[key] or value
            else:
                merged[key] = merged.get(key, 0) + value
    merged.setdefault("rows", 0)
    merged.setdefault("errors", 0)
    return merged


def collect_shard_stats(plan: PassPlan) -> tuple[dict[str, Any], list[str]]:
    """Sum the stats every shard file carries in its footer (one shard in memory at a time, for files written
    without a footer) and list the nodes that generated them."""
    parts, nodes = [], set()
    for shard in plan.shards:
        path = plan.shard_path(shard.shard)
        if not path.is_file():
            raise GenerationError(f"{path} is missing after generation; rerun to resume")
        footer = read_footer(path)
        if "stats" not in footer:
            problems = read_rows(plan.problems_path, shard.offset, shard.rows, PROBLEM_SCHEMA).to_pylist()
            footer["stats"] = rationale_stats(read_table(path, RATIONALE_SCHEMA).to_pylist(),
                                              {p["id"]: p for p in problems})
        parts.append(footer["stats"])
        if footer.get("node"):
            nodes.add(footer["node"])
    return merge_stats(parts), sorted(nodes)
