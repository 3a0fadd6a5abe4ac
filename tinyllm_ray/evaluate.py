"""Recipe: accuracy of the student (answer prefix only) and of each teacher asked without the gold answer.

Writes ``evaluation/report.json`` (with per-problem predictions) and ``evaluation/report.md`` (a table).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray import prompts
from tinyllm_ray.config import JobConfig
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import ArtifactError, RATIONALE_SCHEMA, read_manifest, read_table, write_manifest

log = logging.getLogger("tinyllm_ray")


def student_predictions(model_dir: str, seq2seq: bool, problems: list[dict], task_prefix: str,
                        batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy answers of an HF student for each problem (runs wherever it is called: a Ray task on clusters)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir).to(device).eval()
    texts = [prompts.student_prompt(task_prefix, prompts.student_input(p)) for p in problems]
    answers: list[str] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="student eval", unit="batch"):
        chunk = texts[start:start + batch_size]
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        if not seq2seq:
            output = output[:, encoded["input_ids"].shape[1]:]
        answers.extend(t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True))
    return answers


def score(problems: list[dict], predictions: list[str], parse: bool) -> dict[str, Any]:
    """Accuracy: the student must produce the gold option text (normalised); teachers may name a letter."""
    rows = []
    for problem, prediction in zip(problems, predictions):
        if parse:
            picked = prompts.parse_choice(prediction, problem["choices"])
            correct = picked == problem["answer_index"]
        else:
            correct = prompts.exact_match(prediction, problem["answer"])
        rows.append({"id": problem["id"], "prediction": prediction, "gold": problem["answer"], "correct": correct})
    total = len(rows)
    hits = sum(r["correct"] for r in rows)
    return {"accuracy": hits / total if total else 0.0, "correct": hits, "total": total, "predictions": rows}


def render_table(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report['job']} ({report['dataset']}, split {report['split']})", "",
             "| model | role | accuracy | correct / total |", "|---|---|---|---|"]
    for entry in report["results"]:
        lines.append(f"| {entry['name']} | {entry['role']} | {entry['accuracy']:.2%} | "
                     f"{entry['correct']} / {entry['total']} |")
    return "\n".join(lines) + "\n"


def evaluate(config: JobConfig, teachers: bool | None = None, layout: RunLayout | None = None) -> dict[str, Any]:
    """The `evaluate` stage on the held-out split (config.data.eval_split); ``layout`` as in `train`."""
    import ray

    from tinyllm_ray.generate import answer_pass, run_teachers
    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.runtime import connect

    layout = layout or RunLayout.of(config.output_dir)
    student = read_manifest(layout.student)
    if student is None:
        raise ArtifactError(f"no finished student at {layout.student}: run `tinyllm-ray train` first")
    problems_table: pa.Table = load_frozen_problems(layout, "eval")
    problems = problems_table.to_pylist()
    connect(config)
    start = time.time()
    num_gpus = 1 if config.training.use_gpu else 0
    # On the trainers' nodes (their custom resource), so a student never takes a teacher node's GPU; scheduled on
    # the cluster, not in the caller's placement group (a sweep's Tune trial has no room for it there).
    predict = ray.remote(num_cpus=1, num_gpus=num_gpus, resources=dict(config.training.custom_resources_per_worker),
                         scheduling_strategy="DEFAULT")(student_predictions)
    answers = ray.get(predict.remote(str(layout.student), student["seq2seq"], problems, config.prompts.task_prefix,
                                     config.evaluation.batch_size, config.evaluation.max_new_tokens))
    results = [{"name": f"student ({Path(student['model']).name})", "role": "student",
                **score(problems, answers, parse=False)}]
    if config.evaluation.teachers if teachers is None else teachers:
        run_teachers(config, layout, config.teachers, [answer_pass(config, layout)])
        for teacher in config.teachers:
            table = read_table(layout.teacher_answers / teacher.name, RATIONALE_SCHEMA)
            by_id = {r["id"]: r["rationale"] for r in table.to_pylist()}
            results.append({"name": teacher.name, "role": "teacher",
                            **score(problems, [by_id.get(p["id"], "") for p in problems], parse=True)})
    report = {"job": config.name, "dataset": config.data.dataset, "split": config.data.eval_split,
              "seconds": round(time.time() - start, 2), "results": results}
    layout.evaluation.mkdir(parents=True, exist_ok=True)
    (layout.evaluation / "report.json").write_text(json.dumps(report, indent=2))
    (layout.evaluation / "report.md").write_text(render_table(report))
    write_manifest(layout.evaluation, student_fingerprint=student["fingerprint"],
                   accuracy={r["name"]: r["accuracy"] for r in results})
    return report
