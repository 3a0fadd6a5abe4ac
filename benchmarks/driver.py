"""Section ``driver``: the driver's peak memory where it holds a whole split, each step in a fresh interpreter:
validating 200,000 input problems (``prepare_problems``' work) and building their training table from two
teachers' rationales in one process (``build_training_table`` over the whole split: ``train``'s work until it built
the set in Ray Data tasks, ``tinyllm_ray.training_stream``; the scale section measures that at 10,000 to 1,000,000
problems)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from benchmarks.common import REPO, Context, Row, SectionResult, fmt
from benchmarks.jobs import demo_train_rows

SECTION = "driver"
PER_MODEL = False

# VmHWM (the process's peak RSS) rather than ru_maxrss, which a child inherits from the parent it was forked from
_PEAK = """
import json, sys, time
sys.path.insert(0, {repo!r})
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
{imports}
before = status("VmRSS")
t = time.time()
{work}
print(json.dumps({{"seconds": round(time.time() - t, 2), "peak_rss_mb": round(status("VmHWM") / 1024),
                  "rss_before_mb": round(before / 1024), "rows": rows}}))
"""


def _peak_rss(imports: str, work: str) -> dict[str, Any]:
    """Run ``work`` in a fresh interpreter (after ``imports``); its seconds and peak RSS (Linux), with whatever JSON
    lines ``work`` itself printed merged in (the measurement's own line last)."""
    code = _PEAK.format(repo=str(REPO), imports=imports, work=work)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    merged: dict[str, Any] = {}
    for line in done.stdout.strip().splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    return merged


def run(ctx: Context) -> "DriverResult":
    """The driver's peak memory where it holds a whole split: validating the input problems (`prepare_problems`)
    and building the training table from two teachers' rationales in one process, at 200,000 problems."""
    import pyarrow as pa

    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.schemas import RATIONALE_SCHEMA, write_manifest, write_table

    tmp, quick = ctx.tmp, ctx.quick

    size = 20_000 if quick else 200_000
    rows = demo_train_rows()
    source = tmp / "driver_train.jsonl"
    with open(source, "w") as out:
        for i in range(size):
            out.write(json.dumps({**rows[i % len(rows)], "id": f"d{i}"}) + "\n")
    layout = RunLayout.of(tmp / "driver_run")
    print(f"[bench] driver: validating {size} problems", flush=True)
    load = _peak_rss(
        "from tinyllm_ray.config import DataConfig\nfrom tinyllm_ray.data import load_problems\n"
        "from tinyllm_ray.schemas import write_table",
        f"table = load_problems(DataConfig(format='jsonl', path={str(source)!r}), 'train')\n"
        f"write_table(table, {str(layout.problem_file('train'))!r}, row_group_size=1024)\nrows = table.num_rows")
    write_manifest(layout.problems, fingerprint="bench")
    # two teachers' rationales as shards of 1,024 rows, with prompts of a realistic length (2 demos, ~1,500 chars)
    prompt, rationale = "Question: ... " * 110, "Because the answer follows from the question. " * 6
    for teacher in ("t1", "t2"):
        folder = layout.teacher_dir(teacher)
        for start in range(0, size, 1024):
            ids = [f"d{i}" for i in range(start, min(start + 1024, size))]
            write_table(pa.Table.from_pylist([
                {"id": i, "dataset": "demo", "teacher": teacher, "model": "m", "prompt": prompt, "rationale": rationale,
                 "num_prompt_tokens": 300, "num_generated_tokens": 60, "finish_reason": "stop",
                 "sampling_params": "{}", "error": None} for i in ids], schema=RATIONALE_SCHEMA),
                folder / f"shard-{start // 1024:06d}.parquet")
        write_manifest(folder, rows=size)
    print(f"[bench] driver: training table of {size} problems x 2 teachers", flush=True)
    build = _peak_rss(
        "from tinyllm_ray.layout import RunLayout\nfrom tinyllm_ray.problems import load_frozen_problems\n"
        "from tinyllm_ray.train import load_rationales\nfrom tinyllm_ray.training_data import build_training_table",
        f"layout = RunLayout.of({str(layout.root)!r})\n"
        "table, _ = build_training_table(load_frozen_problems(layout, 'train'), "
        "{t: load_rationales(layout, t) for t in ('t1', 't2')})\nrows = table.num_rows")
    return DriverResult(SECTION, {"problems": size, "input_mb": round(source.stat().st_size / 2**20, 1),
                                  "load_problems": load, "build_training_table": build})


@dataclass(frozen=True)
class DriverResult(SectionResult):
    def table_rows(self) -> list[Row]:
        d = self.data
        return [("driver", f"{step}, {d['problems']} problems", fmt(d[step]["seconds"], 2), "", "", "",
                 f"peak RSS {d[step]['peak_rss_mb']} MB (after imports {d[step]['rss_before_mb']} MB)")
                for step in ("load_problems", "build_training_table")]

