"""Sweep planning, per-trial configs, concurrency and the results writers (pure; no Ray)."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pytest

from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.config import ConfigError, SweepConfig, TrainingConfig, load_config
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.evaluate import summarise
from tinyllm_ray.stats import PairedTable, newcombe_paired_interval, wilson_interval
from tinyllm_ray.sweep import (
    Trial, default_concurrency, plan_trials, result_rows, student_labels, teachers_needed, trial_config, trial_need,
    trial_resources,
)
from tinyllm_ray.sweep_results import (
    COLUMNS, compare_to_baselines, render_csv, render_markdown, student_entries, summary, write_results,
)

SAFE = re.compile(r"^[A-Za-z0-9_.+-]+$")


def plan(*overrides: str) -> list[Trial]:
    return plan_trials(load_config("tiny", list(overrides)))


def kinds(trials: list[Trial]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.kind] = out.get(t.kind, 0) + 1
    return out


def test_default_sweep_is_the_job_plus_baselines():
    trials = plan()
    assert [(t.kind, t.teachers, t.alpha) for t in trials] == [
        ("tinyllm", ("tiny_a", "tiny_b"), None), ("answer_only", (), None),
        ("single_teacher", ("tiny_a",), None), ("single_teacher", ("tiny_b",), None)]
    assert {t.student for t in trials} == {"builtin:tiny-llama"} and {t.data_fraction for t in trials} == {1.0}
    assert len(plan("sweep.baselines=false")) == 1


def test_grid_is_the_product_of_the_axes_and_baselines_come_once_per_student_and_fraction():
    trials = plan("sweep.alpha=[0.1, 1]", "sweep.students=[builtin:tiny-llama, builtin:tiny-t5]",
                  "sweep.data_fractions=[0.5, 1]")
    # per student x fraction: 2 alphas x 1 subset + 1 answer-only + 2 teachers x 2 alphas
    assert len(trials) == 2 * 2 * (2 + 1 + 4)
    assert kinds(trials) == {"tinyllm": 8, "answer_only": 4, "single_teacher": 16}
    answer_only = [(t.student, t.data_fraction) for t in trials if t.kind == "answer_only"]
    assert sorted(answer_only) == sorted({(t.student, t.data_fraction) for t in trials})
    assert all(t.alpha is None and t.teachers == () for t in trials if t.kind == "answer_only")
    assert len(set(trials)) == len(trials)


def test_subsets_in_the_grid_are_not_repeated_as_baselines():
    trials = plan("sweep.teacher_subsets=[[tiny_b, tiny_a], [tiny_a], []]", "sweep.alpha=[0.5]")
    keys = [(t.teachers, t.alpha) for t in trials]
    assert len(keys) == len(set(keys))
    assert keys == [(("tiny_a", "tiny_b"), 0.5), (("tiny_a",), 0.5), ((), None), (("tiny_b",), 0.5)]
    assert trials[0].teachers == ("tiny_a", "tiny_b")  # job order, whatever order the subset was written in


def test_only_teachers_of_the_grid_get_single_teacher_baselines():
    trials = plan("sweep.teacher_subsets=[[tiny_a]]")
    assert [(t.kind, t.teachers) for t in trials] == [("single_teacher", ("tiny_a",)), ("answer_only", ())]
    assert teachers_needed(load_config("tiny"), trials) == ["tiny_a"]


def test_job_teacher_subset_is_the_default_axis():
    trials = plan("training.teachers=[tiny_b]")
    assert [(t.kind, t.teachers) for t in trials] == [("single_teacher", ("tiny_b",)), ("answer_only", ())]
    assert [t.kind for t in plan("training.teachers=[]", "sweep.baselines=false")] == ["answer_only"]


def test_names_are_unique_readable_and_filesystem_safe():
    trials = plan("sweep.alpha=[0.01, 0.5, 2]", "sweep.data_fractions=[0.25, 1]",
                  "sweep.students=[builtin:tiny-llama, /models/a/student, /models/b/student]")
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    assert all(SAFE.match(n) and len(n) < 120 for n in names)
    assert "tinyllm-tiny_a+tiny_b-a0.5-tiny-llama-f0.25" in names
    assert "answer-only-tiny-llama-f1" in names and "single-tiny_b-a2-tiny-llama-f1" in names
    labels = student_labels(["/models/a/student", "/models/b/student", "org/Model-1"])
    assert labels["org/Model-1"] == "Model-1"
    assert labels["/models/a/student"] != labels["/models/b/student"]
    assert all(label.startswith("student.") for label in list(labels.values())[:2])


def test_trial_config_sets_teachers_alpha_student_and_fraction():
    config = load_config("tiny", ["training.alpha={tiny_a: 0.3, tiny_b: 2.0}", "student.architecture=decoder"])
    trial = Trial("t", "single_teacher", ("tiny_b",), 0.5, "builtin:tiny-t5", 0.25)
    job = trial_config(config, trial)
    assert job.training.teachers == ["tiny_b"] and [t.name for t in job.distilled_teachers()] == ["tiny_b"]
    assert job.training.alpha == {"tiny_b": 0.5} and job.training.data_fraction == 0.25
    assert job.student.model == "builtin:tiny-t5" and job.student.architecture == "auto"
    assert job.evaluation.teachers is False and job.sweep.alpha == []
    assert job.output_dir == config.output_dir and job.teachers == config.teachers
    # alpha None keeps the job's weights for the trial's own teachers only
    keep = trial_config(config, Trial("k", "tinyllm", ("tiny_a", "tiny_b"), None, config.student.model, 1.0))
    assert keep.training.alpha == {"tiny_a": 0.3, "tiny_b": 2.0}
    assert keep.student.architecture == "decoder"


def test_answer_only_trial_distils_no_teacher():
    config = load_config("tiny", ["training.alpha={tiny_a: 0.3}"])
    trial = next(t for t in plan_trials(config) if t.kind == "answer_only")
    job = trial_config(config, trial)
    assert job.training.teachers == [] and job.distilled_teachers() == [] and job.training.alpha == {}


def test_unknown_teacher_subset_is_rejected_by_config_loading():
    with pytest.raises(ConfigError, match="sweep.teacher_subsets names unknown teachers"):
        load_config("tiny", ["sweep.teacher_subsets=[[tiny_a, nobody]]"])
    with pytest.raises(ConfigError, match="data_fractions"):
        load_config("tiny", ["sweep.data_fractions=[0]"])


@pytest.mark.parametrize("args,message", [
    (["--set", "sweep.teacher_subsets=[[tiny_a, nobody]]"], "sweep.teacher_subsets names unknown teachers"),
    (["--set", "sweep.alpha=[-1]"], "sweep.alpha"),
    (["--set", "sweep.students=[/nope/student]"], "/nope/student"),
    (["--max-concurrent", "0"], "--max-concurrent"),
])
def test_cli_bad_sweep_input_exits_2_before_anything_runs(tmp_path, args, message):
    result = CliRunner().invoke(app, ["sweep", "tiny", "-o", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    # generation (the first thing that needs Ray) freezes the problems first: nothing of it, nor of the sweep
    assert not (tmp_path / "run" / "problems").exists() and not (tmp_path / "run" / "sweep").exists()


@pytest.mark.parametrize("cluster,training,expected", [
    ({"CPU": 6}, {"num_workers": 1}, 4),                           # (6 - 1 free) // (1 worker + 0.1 driver)
    ({"CPU": 6}, {"num_workers": 2}, 2),
    ({"CPU": 2}, {"num_workers": 2}, 1),                           # never below one
    ({"CPU": 64}, {"num_workers": 2, "cpus_per_worker": 4}, 7),    # 63 // 8.1
    ({"CPU": 128, "GPU": 8}, {"num_workers": 2, "use_gpu": True}, 4),
    ({"CPU": 128, "GPU": 8}, {"num_workers": 3, "use_gpu": True}, 2),
    ({"CPU": 128}, {"num_workers": 2, "use_gpu": True}, 1),        # no GPU at all: still one (it will wait)
    ({"CPU": 128, "trainer": 4}, {"num_workers": 2, "custom_resources_per_worker": {"trainer": 1}}, 2),
])
def test_default_concurrency(cluster, training, expected):
    assert default_concurrency(cluster, TrainingConfig(**training), SweepConfig()) == expected


def test_a_trial_holds_its_driver_and_its_workers():
    assert trial_resources(SweepConfig()) == {"CPU": 0.1}
    training = TrainingConfig(num_workers=3, cpus_per_worker=2, use_gpu=True)
    assert trial_need(training, SweepConfig()) == {"CPU": 6.1, "GPU": 3.0}


def test_a_trial_driver_resource_replaces_its_cpu_and_bounds_concurrency():
    on_head = SweepConfig(trial_resources={"tinyllm_driver": 1})
    assert trial_resources(on_head) == {"tinyllm_driver": 1.0}  # no CPU: the head advertises none
    training = TrainingConfig(num_workers=2, cpus_per_worker=2, custom_resources_per_worker={"trainer": 1})
    assert trial_need(training, on_head) == {"CPU": 4.0, "tinyllm_driver": 1.0, "trainer": 2.0}
    assert default_concurrency({"CPU": 100, "trainer": 8, "tinyllm_driver": 3}, training, on_head) == 3
    with pytest.raises(ValueError, match="not a custom resource"):
        SweepConfig(trial_resources={"CPU": 1})


IDS = [f"q{i:02d}" for i in range(16)]
TINYLLM, ANSWER_ONLY = "tinyllm-tiny_a+tiny_b-a0.5-tiny-llama-f1", "answer-only-tiny-llama-f1"
SINGLE_A, SINGLE_B = "single-tiny_a-a0.5-tiny-llama-f1", "single-tiny_b-a0.5-tiny-llama-f1"


def _entry(right: int, method: str = "generate") -> dict:
    """A student report entry (as evaluate writes it) that gets the first ``right`` of 16 problems right."""
    predictions = [{"id": i, "prediction": "x", "gold": "x", "correct": n < right} for n, i in enumerate(IDS)]
    return {"name": "student (tiny-llama)", "role": "student", "method": method, **summarise(predictions),
            "predictions": predictions}


# answer-only gets q00-q03 right; tinyllm also q04-q07 (4 more, none fewer); single_a also q04-q09 (6 more)
RIGHT = {TINYLLM: 8, ANSWER_ONLY: 4, SINGLE_A: 10}
TRAINING = {TINYLLM: {"optimizer_steps": 2, "train_seconds": 31.2}, ANSWER_ONLY: {"optimizer_steps": 2,
            "train_seconds": 30.0}, SINGLE_A: {"optimizer_steps": 2, "train_seconds": 29.0},
            SINGLE_B: {"error": "TrainingError: boom | twice"}}


def _rows(methods: tuple[str, ...] = ("generate",)):
    method = "both" if len(methods) > 1 else methods[0]
    config = load_config("tiny", ["sweep.alpha=[0.5]", f"evaluation.method={method}"])
    entries = {name: {m: _entry(right, m) for m in methods} for name, right in RIGHT.items()}
    rows = []
    for trial in plan_trials(config):
        rows += result_rows(trial, config, TRAINING[trial.name], None, entries.get(trial.name))
    return compare_to_baselines(rows, entries)


def test_result_rows_and_summary():
    rows = _rows()
    assert [r["name"] for r in rows] == [TINYLLM, ANSWER_ONLY, SINGLE_A, SINGLE_B]
    assert all(list(r) == list(COLUMNS) for r in rows)
    assert rows[0]["alpha"] == {"tiny_a": 0.5, "tiny_b": 0.5} and rows[0]["teachers"] == ["tiny_a", "tiny_b"]
    assert rows[1]["alpha"] == {} and rows[1]["kind"] == "answer_only"
    assert (rows[0]["accuracy"], rows[0]["correct"], rows[0]["total"], rows[0]["method"]) == (0.5, 8, 16, "generate")
    assert (rows[0]["interval_low"], rows[0]["interval_high"]) == pytest.approx(wilson_interval(8, 16))
    failed = rows[3]
    assert failed["accuracy"] is None and failed["error"].startswith("TrainingError")
    facts = summary(rows)
    assert facts["best"] == TINYLLM   # best non-baseline, not best overall
    assert facts["baselines"] == {SINGLE_A: 0.625, ANSWER_ONLY: 0.25}
    assert facts["failed"] == [SINGLE_B]


def test_every_trial_is_compared_with_the_answer_only_baseline_on_the_same_problems():
    rows = {r["name"]: r for r in _rows()}
    assert rows[ANSWER_ONLY]["baseline"] is None and rows[ANSWER_ONLY]["mcnemar_p"] is None  # itself
    assert rows[SINGLE_B]["baseline"] is None  # failed: nothing to compare
    tinyllm, single = rows[TINYLLM], rows[SINGLE_A]
    assert tinyllm["baseline"] == single["baseline"] == ANSWER_ONLY
    # tinyllm vs answer-only: 4 problems only tinyllm gets right, none the other way: 2 * (1/2)^4 = 0.125
    assert (tinyllm["only_trial_correct"], tinyllm["only_baseline_correct"]) == (4, 0)
    assert tinyllm["difference"] == pytest.approx(4 / 16) and tinyllm["mcnemar_p"] == pytest.approx(0.125)
    assert tinyllm["significant"] is False
    assert (tinyllm["difference_low"], tinyllm["difference_high"]) == pytest.approx(
        newcombe_paired_interval(PairedTable(both=4, only_x=4, only_y=0, neither=8)))
    # single_a: 6 only it gets right: 2 * (1/2)^6 = 0.03125 < 0.05
    assert single["difference"] == pytest.approx(6 / 16) and single["mcnemar_p"] == pytest.approx(0.03125)
    assert single["significant"] is True and single["difference_low"] > 0
    assert summary(list(rows.values()))["significant"] == [
        {"name": SINGLE_A, "method": "generate", "difference": 0.375, "mcnemar_p": pytest.approx(0.03125)}]


def test_two_methods_give_two_rows_per_trial_each_compared_within_its_method():
    rows = _rows(("generate", "loglikelihood"))
    assert [(r["name"], r["method"]) for r in rows[:2]] == [(TINYLLM, "generate"), (TINYLLM, "loglikelihood")]
    assert len(rows) == 8 and all(r["error"] for r in rows if r["name"] == SINGLE_B)
    assert all(r["baseline"] == ANSWER_ONLY for r in rows if r["name"] in (TINYLLM, SINGLE_A))
    facts = summary(rows)
    assert facts["comparisons"] == 4 and facts["failed"] == [SINGLE_B]
    assert [(s["name"], s["method"]) for s in facts["significant"]] == [(SINGLE_A, "generate"),
                                                                        (SINGLE_A, "loglikelihood")]
    text = render_markdown(rows, "tiny")
    assert f"**{SINGLE_A} (loglikelihood)** +37.5 pp" in text
    entries = student_entries({"results": [_entry(3, "loglikelihood"), {"role": "teacher", "name": "t"},
                                           {k: v for k, v in _entry(2).items() if k != "method"}]})
    assert sorted(entries) == ["generate", "loglikelihood"] and entries["generate"]["correct"] == 2


def test_a_failed_baseline_leaves_the_comparison_empty():
    config = load_config("tiny", ["sweep.alpha=[0.5]"])
    rows = []
    for trial in plan_trials(config):
        training = {"error": "TrainingError: no"} if trial.name == ANSWER_ONLY else TRAINING[trial.name]
        rows += result_rows(trial, config, training, None, {"generate": _entry(RIGHT.get(trial.name, 0))})
    rows = compare_to_baselines(rows, {})
    assert all(r["mcnemar_p"] is None for r in rows)
    assert "No trial could be compared with an answer-only baseline" in render_markdown(rows, "tiny")


def test_markdown_is_sorted_by_accuracy_and_names_best_baselines_and_significance():
    text = render_markdown(_rows(), "tiny")
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert [line.split(" | ")[0][2:] for line in table] == [SINGLE_A, TINYLLM, ANSWER_ONLY, SINGLE_B]
    assert all(line.count(" | ") == 15 for line in table)  # the error's "|" does not break the table
    low, high = wilson_interval(10, 16)
    assert f"| generate | 62.50% | {low:.1%} - {high:.1%} | 10 / 16 | +37.5 pp * |" in table[0]
    assert "| 0.0312 | 2 | 29 |" in table[0]
    assert "| 25.00% |" in table[2] and "| - | - | - | 2 | 30 |" in table[2]  # the baseline: nothing to compare
    assert f"Best multi-teacher (TinyLLM) trial (generate): **{TINYLLM}**, accuracy 50.00%" in text
    assert f"{ANSWER_ONLY} 25.00%" in text and "Failed trials (1)" in text
    assert f"Significant at 5% (1 of 2, marked *): **{SINGLE_A}** +37.5 pp" in text and "p = 0.0312" in text
    assert f"Not significant: {TINYLLM} +25.0 pp" in text and "p = 0.125" in text
    assert "With 2 comparisons, about 0.1 would reach p < 0.05 by chance alone" in text


def test_csv_and_files(tmp_path):
    rows = _rows()
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert len(parsed) == 4 and parsed[0]["teachers"] == "tiny_a+tiny_b" and parsed[0]["alpha"] == "tiny_a=0.5 tiny_b=0.5"
    assert list(parsed[0]) == list(COLUMNS) and parsed[0]["baseline"] == ANSWER_ONLY
    assert float(parsed[2]["mcnemar_p"]) == pytest.approx(0.03125) and parsed[2]["significant"] == "True"
    assert parsed[3]["accuracy"] == "" and parsed[3]["error"].startswith("TrainingError")
    payload = write_results(RunLayout.of(str(tmp_path)), rows, "tiny", max_concurrent_trials=2)
    for name in ("results.json", "results.csv", "results.md"):
        assert (tmp_path / "sweep" / name).is_file()
    assert (tmp_path / "sweep" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "sweep" / "results.json").read_text()) == payload
    assert payload["trials"] == rows and payload["max_concurrent_trials"] == 2
    assert [s["name"] for s in payload["significant"]] == [SINGLE_A]
    write_results(RunLayout.of(str(tmp_path / "both")), _rows(("generate", "loglikelihood")), "tiny")  # methods
    assert (tmp_path / "both" / "sweep" / "results.png").is_file()


class _RecordedDisplay:
    """A progress display that keeps what it was shown, on a stream that cannot be pickled (like a terminal's)."""

    def __init__(self):
        self.stream = open(os.devnull, "w", encoding="utf-8")
        self.shown: list[tuple[int, dict[str, str]]] = []

    def update(self, done: int, **facts: str) -> None:
        self.shown.append((done, facts))

    def close(self) -> None:
        self.stream.close()


def test_the_trial_progress_callback_survives_tunes_pickling_of_the_run_config():
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    from types import SimpleNamespace

    from tinyllm_ray.sweep import _trial_progress

    display = _RecordedDisplay()
    with pytest.raises(Exception):
        cloudpickle.dumps(display)  # the stream is what used to break `tinyllm-ray sweep`
    callback = _trial_progress(display)
    trial = SimpleNamespace(config={"trial": "tinyllm_a"})
    callback.on_trial_start(0, [], trial)
    callback.on_trial_error(0, [], trial)
    assert display.shown == [(0, {"running": "running tinyllm_a", "failed": ""}), (1, {"running": "", "failed": "1 failed"})]
    restored = cloudpickle.loads(cloudpickle.dumps(callback))
    restored.on_trial_complete(0, [], trial)  # a restored callback has no display and shows nothing
    assert (restored.ended, restored.failed, len(display.shown)) == (2, 1, 2)
    display.close()
