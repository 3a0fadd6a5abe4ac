"""What a cluster user does: start a Ray head (loopback only), `ray job submit` a job, wait, read its artifacts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tinyllm_ray.schemas import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Ray 2.60 heads enable token auth; clients only send ~/.ray/auth_token when told the mode.
ENV = dict(os.environ, RAY_AUTH_MODE="token", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A real head node on 127.0.0.1 with the job server, stopped precisely (not `ray stop`, which would kill
    every Ray instance on the machine)."""
    gcs_port, dashboard_port, agent_port, agent_grpc, metrics_port, env_agent_port = (_free_port() for _ in range(6))
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # Unix socket paths must stay under 108 bytes
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--num-cpus=6", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={agent_port}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics_port}",
         f"--runtime-env-agent-port={env_agent_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--", "true"],
                               capture_output=True, text=True, env=ENV)
        if probe.returncode == 0:
            break
        if head.poll() is not None:
            pytest.fail(f"ray head exited: {head.stdout.read()[-2000:]}")
        time.sleep(2)
    else:
        pytest.fail(f"ray head's job server did not accept a job within 180 s: {probe.stderr[-2000:]}")
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_job(ray_head: str, tmp_path: Path):
    out = tmp_path / "out"
    runtime_env = {
        "working_dir": str(REPO),
        "excludes": [".venv", ".git", "runs", "benchmarks/out", "**/__pycache__"],
        "env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TINYLLM_RAY_CACHE", "VLLM_CACHE_ROOT",
                                                 "TORCHINDUCTOR_CACHE_DIR") if k in os.environ},
    }
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--runtime-env-json", json.dumps(runtime_env),
         "--", str(BIN / "tinyllm-ray"), "run", "tiny", "-o", str(out), "--set", "evaluation.teachers=false"],
        capture_output=True, text=True, timeout=30 * 60, env=ENV)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    assert "succeeded" in (submit.stdout + submit.stderr).lower()
    assert read_manifest(out / "rationales" / "tiny_a")["counts"]["rows"] == 16
    assert read_manifest(out / "student")["optimizer_steps"] == 3
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert [r["role"] for r in report["results"]] == ["student"]
