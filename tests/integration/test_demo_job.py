"""The README's first command: the embedded demo job with the real SmolLM2-135M weights, end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_manifest, read_table

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_demo_job_end_to_end(tmp_path: Path):
    exe = Path(sys.executable).parent / "tinyllm-ray"  # the venv's console script; CI does not activate the venv
    assert exe.is_file(), "the console script must be installed (bash .ci/setup)"
    env = dict(os.environ)
    env.pop("TINYLLM_RAY_CACHE", None)  # reuse the converted SmolLM2 folder like a user would
    out = tmp_path / "demo"
    proc = subprocess.run([str(exe), "run", "demo", "-o", str(out)], env=env, capture_output=True, text=True,
                          timeout=40 * 60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for teacher in ("smollm2_greedy", "smollm2_sampled"):
        manifest = read_manifest(out / "rationales" / teacher)
        assert manifest["counts"]["rows"] == 48 and manifest["counts"]["errors"] == 0
        rows = read_table(out / "rationales" / teacher, RATIONALE_SCHEMA).to_pylist()
        assert sum(1 for r in rows if len(r["rationale"].split()) >= 3) >= 40, "a real model writes real text"
    assert read_manifest(out / "student")["optimizer_steps"] == 6
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert [r["name"] for r in report["results"][1:]] == ["smollm2_greedy", "smollm2_sampled"]
    assert all(r["total"] == 16 for r in report["results"])
    # the closing summary: the accuracy table with intervals, and the report page `run` writes
    assert "95% interval" in proc.stdout and "smollm2_greedy" in proc.stdout
    assert str(out / "report.html") in proc.stdout and (out / "report.html").is_file()
    # What the user reads: the stages and the summary, everything else in the log; there, each step's progress line
    # once and no warning that only says the local cluster has no dashboard.
    output = proc.stdout + proc.stderr
    assert len(output.splitlines()) < 40 and "train     done" in output, output
    log = (out / "logs" / "console.log").read_text()
    step_lines = [line.split("[train] ", 1)[1].split(" loss")[0] for line in log.splitlines() if "[train] step" in line]
    assert step_lines == [f"step {step}/6" for step in range(1, 7)], step_lines
    assert "State API may be temporarily unavailable" not in log
