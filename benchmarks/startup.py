"""Section ``startup``: ``tinyllm-ray run tiny`` as a subprocess, seconds to the first rationale shard on disk and to
the first ``[train] step`` line. It runs first, before the benchmark starts its own Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, SectionResult, fmt

SECTION = "startup"
PER_MODEL = False


def run(ctx: Context, timeout: float = 900) -> "StartupResult":
    """`tinyllm-ray run tiny` as a subprocess: seconds to the first rationale shard and to the first train step."""
    from tinyllm_ray.models import resolve_model

    tmp = ctx.tmp
    resolve_model("builtin:tiny-llama")  # built once beforehand: measure start-up, not the first-ever model build
    out_dir = tmp / "startup_run"
    exe = Path(sys.executable).with_name("tinyllm-ray")
    cmd = [str(exe), "run", "tiny", "-o", str(out_dir)]
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp,
                            env=dict(os.environ))

    def reader():
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    first_shard = None
    while proc.poll() is None and time.time() - t0 < timeout:
        if first_shard is None and any((out_dir / "rationales").glob("*/shard-*.parquet")):
            first_shard = time.time() - t0
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    total = time.time() - t0
    thread.join(timeout=5)
    first_step = next((t - t0 for t, line in lines if "[train] step" in line), None)
    generate_done = next((t - t0 for t, line in lines if "rows," in line and "tokens in" in line), None)
    result: dict[str, Any] = {
        "command": " ".join(["tinyllm-ray", "run", "tiny", "-o", "<tmp>"]), "returncode": proc.returncode,
        "to_first_shard_s": round(first_shard, 2) if first_shard else None,
        "to_first_teacher_done_s": round(generate_done, 2) if generate_done else None,
        "to_first_train_step_s": round(first_step, 2) if first_step else None, "total_s": round(total, 2)}
    if proc.returncode != 0:
        result["output_tail"] = "\n".join(line for _, line in lines[-40:])
    return StartupResult(SECTION, result)


@dataclass(frozen=True)
class StartupResult(SectionResult):
    def table_rows(self) -> list[Row]:
        st = self.data
        return [("startup", "tinyllm-ray run tiny", fmt(st["total_s"], 2), "", "", "",
                 f"first shard {st['to_first_shard_s']} s, first train step {st['to_first_train_step_s']} s, "
                 f"rc {st['returncode']}")]
