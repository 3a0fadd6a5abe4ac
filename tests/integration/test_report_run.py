"""`run tiny` on the real stack ends with its closing summary and report.html; `report` redraws the page from the
artifacts the run wrote (losses from the student manifest, teachers' rationales, the evaluation report)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.report import SECTIONS
from tinyllm_ray.report_data import TOTAL_LOSS, gather

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_run_ends_with_its_summary_and_page_and_report_redraws_it(ray_cluster, tmp_path: Path):
    out = tmp_path / "tiny"
    result = runner.invoke(app, ["run", "tiny", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out / "report.html"
    closing = result.output[result.output.rindex("run: generate -> train -> evaluate done"):]
    assert f"report      {page}" in closing and "95% interval" in closing
    assert f"tinyllm-ray inspect {out}" in closing and f"tensorboard --logdir {out / 'metrics'}" in closing
    written = page.read_text()
    assert re.findall(r'<section id="([a-z]+)"', written) == [s for s in SECTIONS if s != "sweep"]

    data = gather(out)
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert [e["name"] for e in data.accuracy] == [e["name"] for e in report["results"]]
    assert {e["role"] for e in data.accuracy} == {"student", "teacher"}
    [curve] = data.curves
    assert curve.source == "student manifest" and {"answer", "tiny_a", "tiny_b", TOTAL_LOSS} <= set(curve.losses)
    assert [t.name for t in data.teachers] == ["tiny_a", "tiny_b"] and all(t.rows == 16 for t in data.teachers)
    assert data.examples and all(set(e["rationales"]) == {"tiny_a", "tiny_b"} for e in data.examples)

    page.unlink()
    redrawn = runner.invoke(app, ["report", str(out)])
    assert redrawn.exit_code == 0, redrawn.output
    assert str(page) in redrawn.output and 'id="teachers"' in page.read_text()
