"""`tinyllm-ray report` and `inspect`'s tables over run folders written with the project's own writers (schema-true
problems, rationales, manifests, evaluation report, TensorBoard events, sweep results), and the page in a real
headless chromium when one is installed."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.evaluate import score
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.metrics import TensorBoardSink
from tinyllm_ray.quality import summarize_flags
from tinyllm_ray.report import SECTIONS, render_html, write_report
from tinyllm_ray.report_data import TOTAL_LOSS, gather, stated_option
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, write_manifest, write_table
from tinyllm_ray.summary import summarize
from tinyllm_ray.sweep import Trial
from tinyllm_ray.sweep_results import compare_to_baselines, result_rows, write_results

runner = CliRunner()
CHOICES = ["red", "green", "blue"]
TRAIN = [{"id": f"p{i}", "dataset": "toy", "split": "train", "question": f"Which colour is thing {i}?",
          "choices": CHOICES, "answer_index": i % 3, "answer": CHOICES[i % 3], "context": None} for i in range(1, 5)]
EVAL = [{**p, "id": f"e{i}", "split": "test"} for i, p in enumerate(TRAIN[:3], 1)]
LOOP = "the sky is very blue today " * 6
RATIONALES = {  # teacher -> id -> (rationale, finish_reason, error)
    "alpha": {"p1": ("Thing 1 is green. So the answer is (b) green.", "stop", None),
              "p2": ("Thing 2 looks red. So the answer is (a) red.", "stop", None),  # gold is (c): contradicts
              "p3": ("It is <red>, I think.", "stop", None),  # names no option; markup in it is text
              "p4": ("", "stop", None)},  # empty
    "beta": {"p1": ("So the answer is (b) green.", "stop", None),
             "p2": ("Blue things are blue. The answer is (c)", "length", None),  # truncated, agrees
             "p3": (LOOP, "stop", None),  # degenerate
             "p4": ("", "error", "engine timeout")},  # a failed row: not a rationale
}
LOSSES = [{"step": s, "loss": 3.0 / s, "task_losses": {"answer": 1.0 / s, "alpha": 2.0 / s, "beta": 2.5 / s}}
          for s in (1, 2, 3)]


def rationale_row(teacher: str, problem_id: str, text: str, finish: str, error: str | None) -> dict:
    return {"id": problem_id, "dataset": "toy", "teacher": teacher, "model": f"org/{teacher}-7b",
            "prompt": f"Question: {problem_id}", "rationale": text, "num_prompt_tokens": 40,
            "num_generated_tokens": len(text.split()), "finish_reason": finish, "sampling_params": "{}",
            "error": error}


def write_shared(layout: RunLayout) -> None:
    """Problems and both teachers' rationales, each folder closed by its manifest."""
    for role, rows in (("train", TRAIN), ("eval", EVAL)):
        write_table(pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA), layout.problem_file(role))
    write_manifest(layout.problems, fingerprint="p", data={"dataset": "toy"}, counts={"train": 4, "eval": 3})
    problems = {p["id"]: p for p in TRAIN}
    for teacher, rows in RATIONALES.items():
        records = [rationale_row(teacher, i, *r) for i, r in rows.items()]
        write_table(pa.Table.from_pylist(records, schema=RATIONALE_SCHEMA),
                    RunLayout.shard_file(layout.teacher_dir(teacher), 0))
        flags = summarize_flags({**problems[r["id"]], **r} for r in records)  # as the generate stage counts them
        write_manifest(layout.teacher_dir(teacher), fingerprint=teacher, seconds=12.5, mode="rationale",
                       teacher={"name": teacher, "kind": "vllm", "model": f"org/{teacher}-7b"},
                       counts={"rows": 4, "errors": int(teacher == "beta"), "generated_tokens": 900,
                               "prompt_tokens": 160, **flags})


def evaluation_report(student_right: int) -> dict:
    """A report.json as `evaluate` writes it: the student gets the first ``student_right`` eval problems right."""
    student = [p["answer"] if i < student_right else "nothing" for i, p in enumerate(EVAL)]
    results = [{"name": "student (tiny)", "role": "student", "method": "generate",
                **score(EVAL, student, parse=False)},
               {"name": "alpha", "role": "teacher", "method": "generate",
                **score(EVAL, [f"({'abc'[p['answer_index']]})" for p in EVAL], parse=True)}]
    return {"job": "toyjob", "dataset": "toy", "split": "test", "methods": ["generate"], "level": 0.95,
            "interval_method": "wilson", "seconds": 1.0, "results": results}


def write_student_and_evaluation(layout: RunLayout, student_right: int) -> dict:
    layout.student.mkdir(parents=True)
    write_manifest(layout.student, fingerprint="s", model="builtin:tiny", teachers=["alpha", "beta"],
                   optimizer_steps=3, train_tokens=1234, seconds=5.0, losses=LOSSES)
    report = evaluation_report(student_right)
    layout.evaluation.mkdir(parents=True)
    layout.report_json.write_text(json.dumps(report))
    write_manifest(layout.evaluation, fingerprint="e", accuracy={r["name"]: r["accuracy"] for r in report["results"]})
    return report


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    layout = RunLayout.of(str(tmp_path / "run"))
    write_shared(layout)
    layout.config.write_text("name: toyjob\noutput_dir: somewhere\n")
    write_student_and_evaluation(layout, student_right=2)
    return layout.root


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A sweep: two finished trials (results.json from the sweep's writer) and one still training (events only)."""
    layout = RunLayout.of(str(tmp_path / "sweep_run"))
    write_shared(layout)
    trials = [Trial("tinyllm-alpha+beta", "tinyllm", ("alpha", "beta"), None, "tiny", 1.0),
              Trial("answer-only", "answer_only", (), None, "tiny", 1.0)]
    rows, entries = [], {}
    for trial, right in zip(trials, (3, 1)):
        report = write_student_and_evaluation(layout.trial(trial.name), right)
        entries[trial.name] = {"generate": report["results"][0]}
        rows += result_rows(trial, {t: 1.0 for t in trial.teachers}, ["generate"],
                            {"optimizer_steps": 3, "train_seconds": 5.0}, None, entries[trial.name])
    write_results(layout, compare_to_baselines(rows, entries), "toyjob (toy, split test)")
    sink = TensorBoardSink(layout.trial("single-alpha").metrics / "train")
    for step in (1, 2):
        sink.log({"loss": 2.0 / step, "loss/answer": 1.0 / step, "loss/alpha": 1.5 / step}, step=step)
    sink.close()
    return layout.root


def test_gather_counts_flags_agreement_and_lengths_from_the_rationales(run_dir: Path):
    data = gather(run_dir)
    alpha, beta = data.teachers
    assert (alpha.name, alpha.rows, alpha.errors, beta.errors) == ("alpha", 4, 0, 1)
    assert alpha.agreement == {"agrees": 1, "contradicts": 1, "no_answer": 2}
    assert beta.agreement == {"agrees": 2, "contradicts": 0, "no_answer": 1}  # the failed row is not counted
    assert alpha.flags == {"empty": 1, "degenerate": 0, "truncated": 0, "contradicting": 1, "flagged": 2}
    assert beta.flags == {"empty": 0, "degenerate": 1, "truncated": 1, "contradicting": 0, "flagged": 2}
    assert alpha.word_counts == [10, 10, 5, 0] and len(beta.word_counts) == 3
    assert (alpha.generated_tokens, alpha.prompt_tokens, alpha.seconds) == (900, 160, 12.5)
    assert data.job == "toyjob" and not data.is_sweep and data.missing == []


def test_gather_reads_accuracy_with_intervals_and_losses_per_task(run_dir: Path):
    data = gather(run_dir)
    student, teacher = data.accuracy
    assert (student["correct"], student["total"], teacher["correct"]) == (2, 3, 3)
    assert student["interval"][0] < 2 / 3 < student["interval"][1] and "predictions" not in student
    [curve] = data.curves
    assert curve.source == "student manifest"
    assert curve.losses[TOTAL_LOSS] == [(1, 3.0), (2, 1.5), (3, 1.0)]
    assert set(curve.losses) == {TOTAL_LOSS, "answer", "alpha", "beta"}


def test_reports_written_before_intervals_get_theirs_from_the_counts(run_dir: Path):
    path = RunLayout.of(str(run_dir)).report_json
    report = json.loads(path.read_text())
    expected = [e.pop("interval") for e in report["results"]]
    path.write_text(json.dumps(report))
    assert [e["interval"] for e in gather(run_dir).accuracy] == expected


def test_examples_are_the_questions_every_teacher_answered_side_by_side(run_dir: Path):
    examples = gather(run_dir).examples
    assert [e["id"] for e in examples] == ["p1", "p2", "p3"]  # beta failed on p4
    assert examples[1]["answer"] == "blue" and examples[1]["choices"] == CHOICES
    assert examples[0]["rationales"] == {"alpha": RATIONALES["alpha"]["p1"][0], "beta": RATIONALES["beta"]["p1"][0]}


def test_stated_option_is_the_last_answer_statement():
    assert stated_option("the answer is (a). No wait, the answer is (c) blue") == 2
    assert stated_option("Blue, surely.") is None


def test_sweep_gathers_trials_and_the_curve_of_a_trial_still_training(sweep_dir: Path):
    data = gather(sweep_dir)
    assert data.is_sweep and {r["name"] for r in data.sweep["trials"]} == {"tinyllm-alpha+beta", "answer-only"}
    curves = {c.name: c for c in data.curves}
    assert set(curves) == {"tinyllm-alpha+beta", "answer-only", "single-alpha"}
    running = curves["single-alpha"]
    assert running.source.startswith("TensorBoard") and running.losses["alpha"] == [(1, 1.5), (2, 0.75)]
    assert data.accuracy == []  # no run-level report and no teachers' answers in this sweep


def _png_payloads(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.mark.parametrize("folder, sections", [("run_dir", [s for s in SECTIONS if s != "sweep"]),
                                              ("sweep_dir", list(SECTIONS))])
def test_page_has_its_sections_and_embeds_every_chart(folder: str, sections: list[str], request):
    page = render_html(gather(request.getfixturevalue(folder)))
    assert re.findall(r'<section id="([a-z]+)"', page) == sections
    images = _png_payloads(page)
    assert len(images) == page.count("<img") and images
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    assert "engine timeout" not in page  # failed rows are not shown as rationales
    assert "It is &lt;red&gt;, I think." in page and "<red>" not in page


def test_report_command_writes_the_page_and_names_it(sweep_dir: Path):
    result = runner.invoke(app, ["report", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    page = RunLayout.of(str(sweep_dir)).report_html
    assert str(page) in result.output and page.is_file()
    assert 'id="sweep"' in page.read_text() and "tinyllm-alpha+beta" in page.read_text()


def test_report_of_a_folder_that_is_no_run_fails_clearly(tmp_path: Path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_inspect_prints_tables_and_keeps_json(run_dir: Path):
    shown = runner.invoke(app, ["inspect", str(run_dir)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any("Artifacts" in line for line in lines) and any("Teachers' rationales" in line for line in lines)
    header = next(line for line in lines if "alpha" in line and "beta" in line)
    assert header.index("alpha") < header.index("beta")
    assert re.search(r"│ rows\s+│\s+4 │\s+4 │", shown.output)
    assert re.search(r"│ errors\s+│\s+0 │\s+1 │", shown.output)
    assert re.search(r"│ empty\s+│\s+1 │\s+0 │", shown.output) and "org/alpha-7b" in shown.output
    evaluation = next(line for line in lines if "evaluation" in line)
    assert "66.7%" in evaluation and "100.0%" in evaluation
    as_json = runner.invoke(app, ["inspect", str(run_dir), "--json"])
    assert json.loads(as_json.output) == json.loads(json.dumps(summarize(run_dir), default=str))


# ---------------------------------------------------------------- in a real browser

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
HARNESS = """<!DOCTYPE html><html><body><iframe id="page" src="report.html" width="1200" height="900"></iframe>
<script>document.getElementById("page").addEventListener("load", () => {
  const doc = document.getElementById("page").contentDocument, images = [...doc.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const ids = [...doc.querySelectorAll("section[id]")].map(s => s.id).join(",");
  document.body.insertAdjacentHTML("beforeend",
    `<pre id="result">images=${images.length} broken=${broken} sections=${ids}</pre>`);
});</script></body></html>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless chromium, its console messages on stderr (``INFO:CONSOLE`` lines)."""
    return subprocess.run(["nice", "-n", "19", CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium) for the "
                                             "headless-browser check of report.html")
def test_page_renders_in_headless_chromium(sweep_dir: Path, tmp_path: Path):
    page = write_report(sweep_dir)
    # the console check sees a page's console: a control page that logs one must be caught
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><script>console.error("control-error")</script></body></html>')
    assert any("control-error" in m for m in console_messages(chromium("--dump-dom", control.as_uri()).stderr))
    loaded = chromium("--dump-dom", page.as_uri())
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert console_messages(loaded.stderr) == []
    assert re.findall(r'<section id="([a-z]+)"', loaded.stdout) == list(SECTIONS)
    harness = page.parent / "harness.html"  # beside the page: file:// frames read each other only with the flag
    harness.write_text(HARNESS)
    checked = chromium("--allow-file-access-from-files", "--dump-dom", harness.as_uri())
    result = re.search(r'<pre id="result">images=(\d+) broken=(\d+) sections=([a-z,]+)</pre>', checked.stdout)
    assert result, checked.stdout[-2000:] + checked.stderr[-2000:]
    images = page.read_text().count("<img")  # sweep, loss, lengths, agreement: the sweep has no run-level accuracy
    assert (int(result[1]), result[2], result[3]) == (images, "0", ",".join(SECTIONS)) and images == 4
    screenshot = tmp_path / "report.png"
    shot = chromium("--hide-scrollbars", "--window-size=1280,3000", f"--screenshot={screenshot}", page.as_uri())
    assert shot.returncode == 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
