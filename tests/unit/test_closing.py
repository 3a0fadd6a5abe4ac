"""The closing summaries commands print: artifact paths, accuracies with intervals, the next commands (pure)."""

from __future__ import annotations

from tinyllm_ray.closing import (
    accuracy_lines, aligned, evaluate_summary, generate_summary, run_summary, sweep_summary, train_summary,
)
from tinyllm_ray.evaluate import summarise
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.stats import wilson_interval
from tinyllm_ray.sweep import Trial
from tinyllm_ray.sweep_results import compare_to_baselines, result_rows, summary

LAYOUT = RunLayout.of("/runs/my job")


def entry(name: str, role: str, right: int, total: int = 10) -> dict:
    rows = [{"id": f"q{i}", "correct": i < right} for i in range(total)]
    return {"name": name, "role": role, "method": "generate", **summarise(rows), "predictions": rows}


REPORT = {"job": "j", "dataset": "arc", "split": "test", "level": 0.95,
          "results": [entry("student (tiny)", "student", 7), entry("llama", "teacher", 9)]}


def test_accuracy_lines_carry_each_wilson_interval_in_aligned_columns():
    lines = accuracy_lines(REPORT)
    low, high = wilson_interval(7, 10, 0.95)
    student = next(line for line in lines if line.startswith("student"))
    assert "70.0%" in student and f"{low:.1%} - {high:.1%}" in student and "7/10" in student
    assert max(len(line) for line in lines) <= 80  # a terminal's width, ray job logs' too
    assert "95% interval" in lines[1] and lines[0].startswith("Accuracy on arc split test")
    header, _, *rows = lines[1:]
    assert all(row.index("70.0%" if "student" in row else "90.0%") == header.index("accuracy") for row in rows)


def test_aligned_pads_every_column_to_its_widest_cell():
    assert aligned(("a", "bb"), [("xxx", 1)]) == ["a    bb", "---  --", "xxx  1"]


def test_run_summary_names_artifacts_accuracy_and_next_commands():
    page = LAYOUT.report_html
    text = run_summary(LAYOUT, REPORT, "tiny", page)
    assert f"report      {page}" in text and str(LAYOUT.student) in text and str(LAYOUT.report_json) in text
    assert "90.0%" in text
    assert "tinyllm-ray inspect '/runs/my job'" in text  # quoted: pasteable into a shell
    assert "tensorboard --logdir '/runs/my job/metrics'" in text and "tinyllm-ray sweep tiny -o '/runs/my job'" in text
    assert "tinyllm-ray report" not in text  # the page is written already
    assert "tinyllm-ray report '/runs/my job'" in run_summary(LAYOUT, REPORT, "tiny", None)


def test_stage_summaries_point_at_the_next_stage():
    manifests = {"llama": {"counts": {"rows": 100, "errors": 2, "generated_tokens": 5000, "flagged": 3},
                           "seconds": 61.2}}
    generated = generate_summary(LAYOUT, manifests, "job.yaml")
    assert str(LAYOUT.teacher_dir("llama")) in generated and "tinyllm-ray train job.yaml -o" in generated
    assert next(line for line in generated.splitlines() if line.startswith("llama")).split() == \
        ["llama", "100", "2", "3", "5000", "61"]
    losses = [{"step": 5, "loss": 1.25, "task_losses": {"answer": 0.5, "llama": 0.75}}]
    trained = train_summary(LAYOUT, {"optimizer_steps": 5, "train_tokens": 99, "seconds": 3, "teachers": ["llama"],
                                     "losses": losses}, "job.yaml")
    assert "step 5): 1.2500  answer=0.500 llama=0.750" in trained and "tinyllm-ray evaluate job.yaml" in trained
    assert f"tensorboard --logdir '{LAYOUT.metrics / 'train'}'" in trained
    evaluated = evaluate_summary(LAYOUT, REPORT, "job.yaml")
    assert str(LAYOUT.report_md) in evaluated and "tinyllm-ray report '/runs/my job'" in evaluated


def test_sweep_summary_ranks_trials_with_intervals_and_the_paired_difference():
    trials = [Trial("multi", "tinyllm", ("a", "b"), None, "tiny", 1.0),
              Trial("answer-only", "answer_only", (), None, "tiny", 1.0),
              Trial("broken", "single_teacher", ("a",), None, "tiny", 1.0)]
    entries = {"multi": {"generate": entry("s", "student", 9)}, "answer-only": {"generate": entry("s", "student", 4)}}
    rows = []
    for trial in trials:
        error = "OOM" if trial.name == "broken" else None
        rows += result_rows(trial, {}, ["generate"], {}, error, entries.get(trial.name))
    rows = compare_to_baselines(rows, entries)
    results = {"title": "t", **summary(rows), "trials": rows}
    text = sweep_summary(LAYOUT, results, None)
    lines = text.splitlines()
    multi = next(line for line in lines if line.startswith("multi"))
    assert "90.0%" in multi and "+50.0 pp" in multi
    assert [line.split()[0] for line in lines if line.split()[:1] in (["multi"], ["answer-only"], ["broken"])] == \
        ["multi", "answer-only", "broken"]
    assert "failed" in next(line for line in lines if line.startswith("broken")) and "Failed trials: broken" in text
    assert str(LAYOUT.sweep_results("md")) in text and f"--logdir '{LAYOUT.sweep / 'trials'}'" in text
