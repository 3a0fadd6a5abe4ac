"""Imported teachers through the real stage: their rows land in the same shards, schema and manifest as generated
ones, one job mixes them with a vLLM teacher, training uses both, and a bad source writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.config import DataConfig, load_config
from tinyllm_ray.data import load_problems
from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_manifest, read_table

pytestmark = pytest.mark.integration
TINYLLM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyllm"


def mixed_job(tmp_path: Path, rows: list[dict]) -> Path:
    """The tiny preset with its second teacher replaced by rationales imported from a JSON Lines file."""
    source = tmp_path / "earlier_run.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = load_config("tiny").model_dump(mode="json")
    job["teachers"][1] = {"kind": "imported", "name": "earlier", "model": "some-api-model",
                          "rationale_prefix": "rationale: ",
                          "source": {"format": "jsonl", "path": str(source), "rationale_field": "text"}}
    job["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def demo_ids(count: int) -> list[str]:
    return load_problems(DataConfig(format="demo", max_train_problems=count), "train").column("id").to_pylist()


def test_a_job_mixes_imported_and_vllm_teachers(ray_cluster, tmp_path: Path):
    ids = demo_ids(16)
    rows = [{"id": i, "text": f"Because of reason {n}. Thus, the answer is (a) x\n\nQ: made up"}
            for n, i in enumerate(ids[:12])]  # 4 problems without a rationale
    job = mixed_job(tmp_path, rows + [{"id": "not-in-the-first-16", "text": "skipped: max_train_problems"}])
    result = CliRunner().invoke(app, ["run", str(job), "--set", "evaluation.teachers=true"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    imported = read_manifest(run / "rationales" / "earlier")
    assert imported["import"] == {"source": str(tmp_path / "earlier_run.jsonl"), "rationales": 12, "missing": 4,
                                  "cut": 12, "outside_problems": 1}
    assert imported["counts"]["rows"] == 16 and imported["counts"]["empty"] == 4
    table = read_table(run / "rationales" / "earlier", RATIONALE_SCHEMA).to_pylist()
    assert {r["finish_reason"] for r in table} == {"imported", "missing"}
    assert all(r["rationale"].endswith("(a) x") for r in table if r["finish_reason"] == "imported")
    student = read_manifest(run / "student")
    assert student["teachers"] == ["tiny_a", "earlier"]
    assert student["rationales"]["earlier"]["usable"] <= 12  # the 4 missing ones are empty: never trained on
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert [r["name"] for r in report["results"] if r["role"] == "teacher"] == ["tiny_a"]  # no answers imported


def test_a_bad_source_stops_before_anything_is_written(ray_cluster, tmp_path: Path):
    ids = demo_ids(16)
    job = mixed_job(tmp_path, [{"id": ids[0], "text": "a"}, {"id": ids[0], "text": "b"}])
    result = CliRunner().invoke(app, ["generate", str(job)])
    assert result.exit_code == 2
    assert "line 2: duplicate id" in result.output
    assert not (tmp_path / "run" / "rationales").exists()  # neither teacher wrote a shard


@pytest.mark.skipif(not (TINYLLM / "arc").is_dir(), reason="TinyLLM data not present")
def test_paper_rationales_import_from_the_tinyllm_layout(ray_cluster, tmp_path: Path):
    result = CliRunner().invoke(app, ["generate", str(Path(__file__).parents[2] / "jobs" / "arc_fidelity.yaml"),
                                      "-o", str(tmp_path / "arc"), "--set", f"data.path={TINYLLM / 'arc'}",
                                      "--set", f"teachers.flan_t5_xl.source.path={TINYLLM / 'arc'}",
                                      "--set", f"teachers.llama2_7b.source.path={TINYLLM / 'arc'}",
                                      "--set", "data.max_train_problems=40"])
    assert result.exit_code == 0, result.output
    flan = read_manifest(tmp_path / "arc" / "rationales" / "flan_t5_xl")
    assert flan["import"]["rationales"] == 40 and flan["import"]["cut"] == 40
    assert flan["import"]["outside_problems"] == 1117 - 40
    assert flan["teacher"]["model"] == "google/flan-t5-xl"
