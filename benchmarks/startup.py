"""Section ``startup``: how soon the first output comes, and where the time before it goes. It runs first, before the
benchmark starts its own Ray cluster; every part runs as a fresh subprocess, as a user's command would.

- ``generate demo`` (two SmolLM2 teachers on the machine's cores, issue 21's setting): seconds from the command to
  Ray's start, each pool's start, each actor's readiness (the actors' own report, logged by `generate`) and the first
  shard, read from its log, against Ray's own start (``ray.init`` in a fresh process) and a bare engine's start (a
  fresh process importing vLLM and building the teacher's ``vllm.LLM``, then its first batch of a lead shard's size).
- ``run tiny``: seconds to the first rationale shard on disk and to the first ``[train] step`` line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, SectionResult, fmt

SECTION = "startup"
PER_MODEL = False
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
TEACHER = re.compile(r"tinyllm_ray: teacher (\S+):")
READY = re.compile(r"an actor was ready ([\d.]+) s after its pool started")

# A fresh process: Ray's local start as `tinyllm-ray` makes it (runtime.connect's defaults), timed around ray.init.
RAY_START = """
import json, os, sys, time
t0 = time.time()
import ray
imported = time.time()
ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)), include_dashboard=False)
print(json.dumps({"import_s": imported - t0, "init_s": time.time() - imported}))
ray.shutdown()
"""

# A fresh process: the demo teacher's engine, as its actor builds it (same env, engine args), then one batch of the
# lead shard's size of its real prompts.
BARE_ENGINE = """
import json, os, sys, time
t0 = time.time()
from vllm import LLM, SamplingParams
imported = time.time()
from tinyllm_ray.config import load_config
from tinyllm_ray.generation_plan import lead_shard_sizes, sampling_dict
from tinyllm_ray.models import resolve_model
from tinyllm_ray.teachers.vllm import engine_kwargs
teacher = load_config("demo").teachers[0]
kwargs = engine_kwargs(teacher, resolve_model(teacher.model))
t1 = time.time()
llm = LLM(**kwargs)
built = time.time()
prompts = [json.loads(line)["prompt"] for line in open(sys.argv[1])][:lead_shard_sizes(teacher.resources.shard_size)[0]]
llm.generate(prompts, SamplingParams(**sampling_dict(teacher, "rationale")), use_tqdm=False)
print(json.dumps({"import_s": imported - t0, "engine_s": built - t1, "first_batch_s": time.time() - built,
                  "first_batch_rows": len(prompts)}))
"""


def run(ctx: Context, timeout: float = 900) -> "StartupResult":
    from tinyllm_ray.models import resolve_model

    resolve_model("builtin:tiny-llama")  # built once beforehand: measure start-up, not the first-ever model build
    resolve_model("builtin:smollm2-135m")
    demo = demo_generate(ctx.tmp / "startup_demo", timeout)
    data = {"demo_generate": demo, "ray_start": fresh_process(RAY_START),
            "bare_engine": fresh_process(BARE_ENGINE, str(demo_prompts(ctx.tmp / "startup_demo"))),
            "run_tiny": run_tiny(ctx.tmp / "startup_run", timeout)}
    return StartupResult(SECTION, data)


def fresh_process(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a new Python (the teacher actors' environment on CPU); its last line is its JSON result."""
    from tinyllm_ray.runtime import teacher_env

    env = {**os.environ, **teacher_env(on_gpu=False)}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"returncode": done.returncode, "output_tail": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def demo_prompts(out_dir: Path) -> Path:
    """The demo run's own rendered prompts of its first teacher, one JSON line each (the bare engine's input)."""
    import pyarrow.parquet as pq

    path = out_dir.with_suffix(".prompts.jsonl")
    table = pq.read_table(out_dir / "rationales" / "smollm2_greedy" / "shard-000000.parquet", columns=["prompt"])
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in table.column("prompt").to_pylist()))
    return path


def demo_generate(out_dir: Path, timeout: float) -> dict[str, Any]:
    """`tinyllm-ray generate demo` on a fresh folder: its timeline from its log, and the first shard file's time."""
    t0 = time.time()
    proc, lines, first_file = _follow_command(["generate", "demo", "-o", str(out_dir)], out_dir, timeout)
    log = (out_dir / "logs" / "console.log").read_text() if (out_dir / "logs" / "console.log").is_file() else ""
    timeline = log_timeline(log, t0)
    return {"command": "tinyllm-ray generate demo -o <tmp>", "returncode": proc.returncode,
            "first_shard_file_s": first_file, **timeline,
            **({"output_tail": "\n".join(lines[-40:])} if proc.returncode else {})}


def log_timeline(log: str, t0: float) -> dict[str, Any]:
    """Seconds after ``t0`` of Ray's start, each pool's start, each actor's readiness (its pool's start plus what the
    actor reported), the first shard written and the first training step, from a run's ``console.log``."""
    def at(line: str) -> float | None:
        found = LOG_TIME.search(line)  # worker lines have a "(Worker pid=...)" prefix
        return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0 if found else None

    lines, last = [], None
    for line in log.splitlines():  # a line without a time of its own (a worker's print) takes the one before it's
        last = at(line) if at(line) is not None else last
        if last is not None:
            lines.append((last, line))

    def first(needle: str) -> float | None:
        return next((round(t, 2) for t, line in lines if needle in line), None)

    pools = {TEACHER.search(line).group(1): t for t, line in lines if "shard(s) to write" in line}
    ready = [(TEACHER.search(line).group(1), float(READY.search(line).group(1)), line.split("tinyllm_ray: ", 1)[-1])
             for _, line in lines if READY.search(line)]
    return {"ray_started_s": first("Started a local Ray instance"), "pool_started_s": first("shard(s) to write"),
            "actors_ready_s": [round(pools[name] + offset, 2) for name, offset, _ in ready if name in pools],
            "actor_startup": [text for _, _, text in ready], "first_shard_logged_s": first("written ("),
            "first_teacher_done_s": first("rationale rows,"), "first_train_step_s": first("[train] step")}


def run_tiny(out_dir: Path, timeout: float) -> dict[str, Any]:
    """`tinyllm-ray run tiny`: seconds to the first rationale shard and to the first train step (from its log)."""
    t0 = time.time()
    proc, lines, first_file = _follow_command(["run", "tiny", "-o", str(out_dir)], out_dir, timeout)
    total = time.time() - t0
    log = out_dir / "logs" / "console.log"
    timeline = log_timeline(log.read_text(), t0) if log.is_file() else {}
    result = {"command": "tinyllm-ray run tiny -o <tmp>", "returncode": proc.returncode,
              "to_first_shard_s": first_file, "total_s": round(total, 2),
              "to_first_train_step_s": timeline.get("first_train_step_s")}
    if proc.returncode:
        result["output_tail"] = "\n".join(line for _, line in lines[-40:])
    return result


def _follow_command(args: list[str], out_dir: Path, timeout: float):
    """Run ``tinyllm-ray args``, collecting its output lines with their times and when a first shard file appears."""
    exe = Path(sys.executable).with_name("tinyllm-ray")
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=out_dir.parent, env=dict(os.environ))

    def reader():
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    first_file = None
    while proc.poll() is None and time.time() - t0 < timeout:
        if first_file is None and any((out_dir / "rationales").glob("*/shard-*.parquet")):
            first_file = round(time.time() - t0, 2)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    thread.join(timeout=5)
    return proc, lines, first_file


@dataclass(frozen=True)
class StartupResult(SectionResult):
    def table_rows(self) -> list[Row]:
        demo, ray_, bare, tiny = (self.data[k] for k in ("demo_generate", "ray_start", "bare_engine", "run_tiny"))
        rows: list[Row] = [("startup", "tinyllm-ray generate demo", fmt(demo.get("first_shard_file_s"), 2), "", "",
                            "", f"Ray {demo.get('ray_started_s')} s, pools {demo.get('pool_started_s')} s, actors "
                            f"ready {demo.get('actors_ready_s')} s, first shard file {demo.get('first_shard_file_s')} "
                            f"s, rc {demo['returncode']}")]
        if "init_s" in ray_ and "engine_s" in bare:
            reference = ray_["init_s"] + bare["import_s"] + bare["engine_s"]
            first = demo.get("first_shard_file_s")
            ratio = f"; first shard / this = {first / reference:.2f}x" if first else ""
            rows.append(("startup", "bare: ray.init + import vLLM + LLM()", fmt(reference, 2), "", "", "",
                         f"ray.init {ray_['init_s']:.2f} s, import vllm {bare['import_s']:.2f} s, LLM() "
                         f"{bare['engine_s']:.2f} s, then {bare['first_batch_rows']} rows in "
                         f"{bare['first_batch_s']:.2f} s{ratio}"))
        rows.append(("startup", "tinyllm-ray run tiny", fmt(tiny["total_s"], 2), "", "", "",
                     f"first shard {tiny['to_first_shard_s']} s, first train step {tiny['to_first_train_step_s']} "
                     f"s, rc {tiny['returncode']}"))
        return rows
