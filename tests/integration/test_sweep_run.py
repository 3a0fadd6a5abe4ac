"""`tinyllm-ray sweep` on the real stack: Ray Tune trials, each a Ray Train + DeepSpeed run and an evaluation task,
over rationales generated once. Kept small: every trial pays a Ray Train start-up."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.schemas import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()

SMALL = ["--set", "sweep.alpha=[0.5]", "--set", "training.num_workers=1", "--set", "training.max_steps=2"]
TRIALS = {  # name -> (teachers, alpha)
    "tinyllm-tiny_a+tiny_b-a0.5-tiny-llama-f1": (["tiny_a", "tiny_b"], {"tiny_a": 0.5, "tiny_b": 0.5}),
    "answer-only-tiny-llama-f1": ([], {}),
    "single-tiny_a-a0.5-tiny-llama-f1": (["tiny_a"], {"tiny_a": 0.5}),
    "single-tiny_b-a0.5-tiny-llama-f1": (["tiny_b"], {"tiny_b": 0.5}),
}


@pytest.fixture(scope="module")
def sweep_run(ray_cluster, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("sweep_run")
    result = runner.invoke(app, ["sweep", "tiny", "-o", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_trial_is_trained_and_evaluated(sweep_run):
    out, _ = sweep_run
    trials = out / "sweep" / "trials"
    assert sorted(p.name for p in trials.iterdir()) == sorted(TRIALS)
    for name, (teachers, alpha) in TRIALS.items():
        student = read_manifest(trials / name / "student")
        assert student["teachers"] == teachers and student["alpha"] == alpha, name
        assert student["optimizer_steps"] == 2 and student["training_problems"] == 16
        assert sorted(student["rationales"]) == teachers  # answer-only: no rationale task at all
        assert (trials / name / "student" / "model.safetensors").is_file()
        report = json.loads((trials / name / "evaluation" / "report.json").read_text())
        assert [r["role"] for r in report["results"]] == ["student"]  # no teacher evaluation per trial
        assert report["results"][0]["method"] == "generate" and len(report["results"][0]["interval"]) == 2
        evaluation = read_manifest(trials / name / "evaluation")
        assert evaluation["student_fingerprint"] == student["fingerprint"] and evaluation["fingerprint"]
    # rationales are shared, generated once at the run's root
    assert {p.name for p in (out / "rationales").iterdir()} == {"tiny_a", "tiny_b"}
    assert not (out / "student").exists()


def test_results_table_plot_and_manifest(sweep_run):
    out, output = sweep_run
    sweep = out / "sweep"
    results = json.loads((sweep / "results.json").read_text())
    rows = results["trials"]
    assert sorted(r["name"] for r in rows) == sorted(TRIALS)
    for row in rows:
        assert row["error"] is None and 0.0 <= row["accuracy"] <= 1.0 and row["total"] == 8
        assert row["optimizer_steps"] == 2 and row["train_seconds"] > 0
        assert (row["teachers"], row["alpha"]) == tuple(TRIALS[row["name"]])
        assert row["method"] == "generate" and row["interval_low"] <= row["accuracy"] <= row["interval_high"]
    # every trial against the answer-only baseline, paired on the same 8 problems
    baseline = next(r for r in rows if r["kind"] == "answer_only")
    assert baseline["baseline"] is None and baseline["mcnemar_p"] is None
    for row in rows:
        if row is not baseline:
            assert row["baseline"] == baseline["name"] and 0.0 < row["mcnemar_p"] <= 1.0
            assert row["difference"] == pytest.approx(row["accuracy"] - baseline["accuracy"])
            assert row["only_trial_correct"] - row["only_baseline_correct"] == row["correct"] - baseline["correct"]
            assert row["difference_low"] <= row["difference"] <= row["difference_high"]
            assert row["significant"] is (row["mcnemar_p"] < 0.05)
    assert results["comparisons"] == 3
    assert results["best"] == "tinyllm-tiny_a+tiny_b-a0.5-tiny-llama-f1"
    assert set(results["baselines"]) == set(TRIALS) - {results["best"]}
    assert len(list(csv.DictReader((sweep / "results.csv").open()))) == 4
    table = (sweep / "results.md").read_text()
    assert all(f"| {name} |" in table for name in TRIALS)
    # the closing summary: every trial, where the table is, and the report page the sweep writes
    assert all(name in output for name in TRIALS) and str(sweep / "results.md") in output
    assert str(out / "report.html") in output and 'id="sweep"' in (out / "report.html").read_text()
    assert "Paired comparisons with the answer-only baseline" in table and "by chance alone" in table
    assert (sweep / "results.png").read_bytes()[:4] == b"\x89PNG"
    manifest = read_manifest(sweep)
    assert sorted(manifest["trials"]) == sorted(TRIALS) and manifest["failed"] == []
    assert (sweep / "tune").is_dir()


def test_rerun_reuses_students_and_a_failing_trial_does_not_stop_the_sweep(sweep_run):
    out, _ = sweep_run
    trials = out / "sweep" / "trials"
    before = {name: (trials / name / "student" / "manifest.json").read_text() for name in TRIALS}
    evaluations = {name: (trials / name / "evaluation" / "manifest.json").read_text() for name in TRIALS}
    # 1/16 of the problems cannot fill one training step: those trials fail before Ray Train starts
    result = runner.invoke(app, ["sweep", "tiny", "-o", str(out), *SMALL,
                                 "--set", "sweep.data_fractions=[1, 0.0625]", "--max-concurrent", "1"])
    assert result.exit_code == 1, result.output
    assert {name: (trials / name / "student" / "manifest.json").read_text() for name in TRIALS} == before
    # and their evaluations: the manifest records the evaluation fingerprint, unchanged here
    assert {name: (trials / name / "evaluation" / "manifest.json").read_text() for name in TRIALS} == evaluations
    rows = {r["name"]: r for r in json.loads((out / "sweep" / "results.json").read_text())["trials"]}
    assert len(rows) == 8
    failed = {name for name, row in rows.items() if row["error"]}
    assert failed == {name.replace("-f1", "-f0.0625") for name in TRIALS}
    assert all("micro_batch_size" in rows[name]["error"] and rows[name]["accuracy"] is None for name in failed)
    assert all(rows[name]["accuracy"] is not None for name in TRIALS)
    assert read_manifest(out / "sweep")["failed"] == sorted(failed, key=list(rows).index)
    assert "trial(s) failed" in result.output


def test_both_scoring_methods_reevaluate_reused_students_and_compare_per_method(sweep_run):
    out, _ = sweep_run
    trials = out / "sweep" / "trials"
    before = {name: (trials / name / "student" / "manifest.json").read_text() for name in TRIALS}
    generate = {r["name"]: r["accuracy"] for r in json.loads((out / "sweep" / "results.json").read_text())["trials"]
                if r["name"] in TRIALS}
    result = runner.invoke(app, ["sweep", "tiny", "-o", str(out), *SMALL, "--set", "evaluation.method=both"])
    assert result.exit_code == 0, result.output
    assert {name: (trials / name / "student" / "manifest.json").read_text() for name in TRIALS} == before
    for name in TRIALS:  # a changed evaluation setting: evaluated again, once per method, on the same problems
        report = json.loads((trials / name / "evaluation" / "report.json").read_text())
        assert report["methods"] == ["generate", "loglikelihood"]
        by_method = {r["method"]: r for r in report["results"]}
        assert [r["role"] for r in report["results"]] == ["student", "student"]
        ids = [[p["id"] for p in r["predictions"]] for r in report["results"]]
        assert ids[0] == ids[1] and len(ids[0]) == 8
        assert by_method["generate"]["accuracy"] == generate[name]  # greedy decoding: the same answers
        for row in by_method["loglikelihood"]["predictions"]:
            assert len(row["scores"]) == len(row["loglikelihoods"]) >= 2
            assert row["correct"] is (row["prediction"] == row["gold"])
        assert read_manifest(trials / name / "evaluation")["methods"] == ["generate", "loglikelihood"]
    results = json.loads((out / "sweep" / "results.json").read_text())
    rows = results["trials"]
    assert sorted((r["name"], r["method"]) for r in rows) == sorted(
        (name, method) for name in TRIALS for method in ("generate", "loglikelihood"))
    for row in rows:
        assert row["error"] is None and row["total"] == 8
        if row["kind"] != "answer_only":
            assert row["baseline"] == "answer-only-tiny-llama-f1" and row["mcnemar_p"] is not None
    assert results["comparisons"] == 6
    assert "| loglikelihood |" in (out / "sweep" / "results.md").read_text()
