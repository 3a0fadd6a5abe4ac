"""preflight(): every problem a job has is found before Ray starts, and the CLI writes nothing when one is."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.config import load_config
from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.preflight import PreflightError, plan_for, preflight, problems


def test_a_good_job_has_no_problems():
    assert problems(load_config("tiny"), "run") == []


def test_every_problem_is_listed_with_its_key():
    job = load_config("tiny", ["teachers.tiny_a.engine.kv_cache_memory_bytes=null", "student.model=/no/such/model",
                               "metrics.mlflow=true"])
    with pytest.raises(PreflightError) as caught:
        preflight(job, "run", only=["nope"])
    message = str(caught.value)
    assert isinstance(caught.value, TinyLLMError)
    for expected in ("unknown teacher(s) ['nope']", "teachers.tiny_a.engine.kv_cache_memory_bytes",
                     "student.model: model path '/no/such/model' does not exist", "metrics.mlflow"):
        assert expected in message


def test_checks_follow_what_the_stage_touches():
    job = load_config("tiny", ["teachers.tiny_a.engine.kv_cache_memory_bytes=null", "student.model=/no/such/model"])
    assert plan_for(job, "generate", only=["tiny_b"]).teachers == ("tiny_b",)
    assert problems(job, "generate", only=["tiny_b"]) == []  # neither the broken teacher nor the student is used
    assert [p.split(":")[0] for p in problems(job, "train")] == ["student.model"]
    assert problems(job, "evaluate", teachers=False) == []  # it scores the trained student, not student.model
    assert len(problems(job, "evaluate", teachers=True)) == 1


def test_unknown_builtin_model_is_found_without_building_it():
    assert "unknown builtin model" in problems(load_config("tiny", ["student.model=builtin:nope"]), "train")[0]


@pytest.mark.parametrize("command", [["generate", "--teacher", "nope"], ["run"], ["validate"]])
def test_cli_stops_before_writing_anything(tmp_path: Path, command: list[str]):
    out = tmp_path / "run"
    args = [*command, "tiny", "-o", str(out), "--set", "student.model=/no/such/model"]
    if command[0] == "generate":
        args = args[:-2]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot run" in result.output
    assert not out.exists()  # no config.yaml, no problems: nothing written


def test_inspect_of_a_missing_folder_exits_2(tmp_path: Path):
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_an_imported_teacher_needs_its_source_not_a_model(tmp_path: Path):
    job = load_config("tiny")
    data = job.model_dump(mode="json")
    data["teachers"].append({"kind": "imported", "name": "paper", "model": "google/flan-t5-xl",
                             "rationale_prefix": "paper: ",
                             "source": {"format": "jsonl", "path": str(tmp_path / "missing.jsonl")}})
    found = problems(type(job).model_validate(data), "generate")
    assert found == [f"teachers.paper.source.path: {tmp_path / 'missing.jsonl'} does not exist"]
