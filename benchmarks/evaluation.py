"""Section ``eval``: the student's evaluation, per model, vLLM against transformers. The same student (the model as
``builtin:`` builds it, loaded directly as a saved HF folder), the same ARC problems and the same settings run
through the product's Ray Data evaluation job (:func:`tinyllm_ray.evaluation_job.run_scoring`, one actor with every
core) once per backend and method; the greedy answers and the picked options are compared problem by problem.

Seconds run from the call (actor start and model load included) to the last row; "steady" leaves out the first
call (the engine's or model's load and warm-up) and rates the calls after it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, SectionResult, fmt
from benchmarks.jobs import MODELS, ensure_ray

SECTION = "eval"
PER_MODEL = True
ARC = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyllm" / "arc"
PROBLEMS = 128  # ARC valid problems in a full run (8 calls of 16)
PER_CALL = 16
BACKENDS = ("vllm", "transformers")


def problems_table(quick: bool):
    """ARC's valid split (the first PROBLEMS), or the demo's 16 valid problems for --quick or without ARC here."""
    from tinyllm_ray.config import DataConfig
    from tinyllm_ray.data import load_problems

    if quick or not ARC.is_dir():
        return load_problems(DataConfig(format="demo"), "valid"), "demo valid"
    table = load_problems(DataConfig(format="tinyllm", path=str(ARC), dataset="arc"), "valid")
    return table.slice(0, PROBLEMS), "ARC valid"


def run_one(model_path: str, backend: str, method: str, problems, max_new_tokens: int) -> dict[str, Any]:
    """One evaluation job; its rows, seconds to the last row and the time each call's rows arrived."""
    from tinyllm_ray.config import EvaluationConfig, TrainingConfig
    from tinyllm_ray.evaluation_job import ScoringJob, remote_args, run_scoring
    from tinyllm_ray.scoring import ScoringOptions
    from tinyllm_ray.scoring.vllm_student import engine_kwargs

    evaluation = EvaluationConfig(max_new_tokens=max_new_tokens, batch_size=PER_CALL)
    training = TrainingConfig(cpus_per_worker=os.cpu_count() or 1)  # one actor, every core, both backends
    engine = engine_kwargs(evaluation.vllm, model_path, on_gpu=False) if backend == "vllm" else {}
    job = ScoringJob(model_path, False, backend, (method,),
                     ScoringOptions("predict: ", evaluation.batch_size, evaluation.max_new_tokens), engine)
    arrivals: list[tuple[float, int]] = []
    start = time.time()
    rows = run_scoring(job, problems, 1, PER_CALL, remote_args(training, evaluation, backend),
                       on_progress=lambda done: arrivals.append((time.time() - start, done)))
    seconds = time.time() - start
    first_s, first_done = arrivals[0] if arrivals else (seconds, problems.num_rows)
    steady_problems = problems.num_rows - first_done
    out = {"seconds": round(seconds, 2), "problems": problems.num_rows,
           "problems_per_s": round(problems.num_rows / seconds, 3), "first_call_s": round(first_s, 2),
           "rows": rows[method]}
    if steady_problems:
        out["steady"] = {"seconds": round(seconds - first_s, 2), "problems": steady_problems,
                         "problems_per_s": round(steady_problems / max(seconds - first_s, 1e-9), 3)}
    return out


def agreement(method: str, a: list[dict], b: list[dict]) -> dict[str, Any]:
    """How many problems the two backends answered alike (and, for log-likelihood, how far their numbers are)."""
    if method == "generate":
        same = sum(x["prediction"] == y["prediction"] for x, y in zip(a, b))
        return {"same": same, "of": len(a), "accuracy": [sum(r["correct"] for r in rows) for rows in (a, b)]}
    same = sum(x["picked"] == y["picked"] for x, y in zip(a, b))
    diff = max((abs(p - q) for x, y in zip(a, b) for p, q in zip(x["loglikelihoods"], y["loglikelihoods"])),
               default=0.0)
    return {"same": same, "of": len(a), "max_abs_loglikelihood_diff": round(diff, 6),
            "accuracy": [sum(r["correct"] for r in rows) for rows in (a, b)]}


def run(ctx: Context, model_key: str) -> "EvalResult":
    from tinyllm_ray.models import resolve_model

    model_path = resolve_model(MODELS[model_key]["model"])
    problems, source = problems_table(ctx.quick)
    max_new_tokens = 8 if ctx.quick else 32
    out: dict[str, Any] = {"model": MODELS[model_key]["model"], "problems": problems.num_rows, "source": source,
                           "per_call": PER_CALL, "max_new_tokens": max_new_tokens, "cpus": os.cpu_count(),
                           "ray_init_seconds": ensure_ray()}
    for method in ("generate", "loglikelihood"):
        runs = {}
        for backend in BACKENDS:
            print(f"[bench] eval {model_key}: {method} with {backend} on {problems.num_rows} {source} problems",
                  flush=True)
            runs[backend] = run_one(model_path, backend, method, problems, max_new_tokens)
        out[method] = {"agreement": agreement(method, runs["vllm"]["rows"], runs["transformers"]["rows"]),
                       **{b: {k: v for k, v in r.items() if k != "rows"} for b, r in runs.items()}}
        out[method]["differing"] = [
            {"id": x["id"], "vllm": x["prediction"], "transformers": y["prediction"]}
            for x, y in zip(runs["vllm"]["rows"], runs["transformers"]["rows"]) if x["prediction"] != y["prediction"]]
    return EvalResult(SECTION, out, key=model_key)


@dataclass(frozen=True)
class EvalResult(SectionResult):
    def table_rows(self) -> list[Row]:
        e, bench, rows = self.data, self.label, []
        for method in ("generate", "loglikelihood"):
            m = e[method]
            for backend in BACKENDS:
                r = m[backend]
                rows.append((bench, f"{method}, {backend}", fmt(r["seconds"], 2), "-", fmt(r["problems_per_s"], 3),
                             "-", f"{r['problems']} {e['source']} problems, first call {r['first_call_s']} s"))
                if "steady" in r:
                    s = r["steady"]
                    rows.append((bench, f"{method}, {backend} steady", fmt(s["seconds"], 2), "-",
                                 fmt(s["problems_per_s"], 3), "-", f"calls 2..n ({s['problems']} problems)"))
            a, v, t = m["agreement"], m["vllm"], m["transformers"]
            extra = (f", max |loglikelihood diff| {a['max_abs_loglikelihood_diff']}" if method == "loglikelihood"
                     else "")
            steady = (f"; steady {v['steady']['problems_per_s'] / max(t['steady']['problems_per_s'], 1e-9):.2f}x"
                      if "steady" in v and "steady" in t else "")
            rows.append((bench, f"{method}: vllm / transformers", "", "", "", "",
                         f"{t['seconds'] / max(v['seconds'], 1e-9):.2f}x faster{steady}; same answer "
                         f"{a['same']}/{a['of']}{extra}; correct {a['accuracy'][0]} / {a['accuracy'][1]}"))
        return rows
