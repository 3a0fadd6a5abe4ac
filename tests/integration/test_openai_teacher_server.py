"""The `openai` teacher kind through the real generate stage (Ray Data actors): against vLLM's own OpenAI-compatible
server (the CPU build, the tiny model) it writes what a vLLM teacher writes, in one job with a vLLM and an imported
teacher; against a fault-injecting server a run over its error budget keeps its rows, and the rerun asks only for
the failed ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from fault_server import FaultServer, query_question
from tinyllm_ray import prompts
from tinyllm_ray.cli import app
from tinyllm_ray.config import DataConfig, load_config
from tinyllm_ray.data import load_problems
from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_manifest, read_table

pytestmark = pytest.mark.integration
runner = CliRunner()
KEY_ENV, KEY = "TINYLLM_TEST_TEACHER_KEY", "sk-integration-5a4b3c"
SERVER_START_S = 900  # vLLM's server on a shared 2-core machine: a bound on waiting, not a performance claim


def job_file(tmp_path: Path, *teachers: dict, keep_tiny_a: bool = True) -> Path:
    job = load_config("tiny").model_dump(mode="json")
    job["teachers"] = ([job["teachers"][0]] if keep_tiny_a else []) + list(teachers)
    job["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def api_teacher(base_url: str, **fields) -> dict:
    return {"kind": "openai", "name": "api", "model": "tiny-llama", "base_url": base_url, "api": "completions",
            "rationale_prefix": "api: ", "resources": {"shard_size": 4, "shards_in_flight": 2}, **fields}


def test_a_run_over_its_error_budget_is_finished_by_a_rerun_of_the_failed_rows(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)  # set after Ray started: the actors get the key from the driver
    problems = load_problems(DataConfig(format="demo", max_train_problems=16), "train").to_pylist()
    faulty = {query_question(prompts.teacher_forcing_prompt(p, [])) for p in problems[2:5]}
    teacher = api_teacher("", api_key_env=KEY_ENV, max_error_rate=0.0,
                          request={"max_retries": 1, "backoff_initial_s": 0.01, "timeout_s": 30})
    with FaultServer(lambda q, a: "500" if q in faulty else "ok", key=KEY) as failing:
        job = job_file(tmp_path, {**teacher, "base_url": failing.url}, keep_tiny_a=False)
        first = runner.invoke(app, ["generate", str(job)])
    assert first.exit_code == 2 and "max_error_rate" in first.output, first.output
    assert KEY not in first.output
    folder = tmp_path / "run" / "rationales" / "api"
    assert read_manifest(folder) is None
    rows = read_table(folder, RATIONALE_SCHEMA).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in problems)  # none lost or doubled
    assert sorted(r["id"] for r in rows if r["error"]) == sorted(p["id"] for p in problems[2:5])
    assert all(failing.requests_for(q) == 2 for q in faulty)

    with FaultServer(key=KEY) as healthy:
        job = job_file(tmp_path, {**teacher, "base_url": healthy.url}, keep_tiny_a=False)  # moved: same output
        rerun = runner.invoke(app, ["generate", str(job)])
    assert rerun.exit_code == 0, rerun.output
    assert sorted(healthy.asked) == sorted(faulty) and set(healthy.asked.values()) == {1}
    again = read_table(folder, RATIONALE_SCHEMA).to_pylist()
    assert sorted(r["id"] for r in again) == sorted(p["id"] for p in problems)
    assert all(r["error"] is None for r in again)
    kept = {r["id"]: r for r in rows if not r["error"]}
    assert all(r == kept[r["id"]] for r in again if r["id"] in kept)
    manifest = read_manifest(folder)
    assert manifest["counts"]["rows"] == 16 and manifest["counts"]["errors"] == 0
    assert KEY not in json.dumps(manifest) and KEY not in (tmp_path / "run" / "config.yaml").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(tmp_path: Path) -> str:
    return (tmp_path / "vllm-server.log").read_text()[-3000:]


@pytest.fixture
def vllm_server(tmp_path):
    """vLLM's OpenAI-compatible server (CPU build) serving the tiny model on 127.0.0.1, as a team would run it."""
    from tinyllm_ray.models import resolve_model

    port = free_port()
    log = (tmp_path / "vllm-server.log").open("w")
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", resolve_model("builtin:tiny-llama"), "--served-model-name", "tiny-llama", "--dtype", "float32", "--max-model-len", "1024",
               "--enforce-eager", "--kv-cache-memory-bytes", str(64 * 2 ** 20), "--seed", "0",
               "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"vLLM's server exited ({server.returncode}):\n{log_tail(tmp_path)}")
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM's server did not start:\n{log_tail(tmp_path)}")
            time.sleep(2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_an_openai_teacher_on_vllms_server_writes_what_the_vllm_teacher_writes(ray_cluster, tmp_path, request):
    # the vLLM teacher first, alone: one engine at a time on this machine
    job = job_file(tmp_path)
    first = runner.invoke(app, ["generate", str(job)])
    assert first.exit_code == 0, first.output
    run = tmp_path / "run"
    vllm_manifest = read_manifest(run / "rationales" / "tiny_a")

    url = request.getfixturevalue("vllm_server")
    ids = load_problems(DataConfig(format="demo", max_train_problems=16), "train").column("id").to_pylist()
    source = tmp_path / "earlier.jsonl"
    source.write_text("".join(json.dumps({"id": i, "rationale": f"Reason {n}."}) + "\n" for n, i in enumerate(ids)))
    tiny_a = load_config("tiny").teachers[0]
    api = api_teacher(url, api_key_env=None, sampling=tiny_a.sampling.model_dump())
    imported = {"kind": "imported", "name": "earlier", "model": "an-earlier-run", "rationale_prefix": "why: ",
                "source": {"format": "jsonl", "path": str(source)}}
    mixed = runner.invoke(app, ["generate", str(job_file(tmp_path, api, imported))])
    assert mixed.exit_code == 0, mixed.output
    assert read_manifest(run / "rationales" / "tiny_a") == vllm_manifest  # reused, not regenerated
    assert read_manifest(run / "rationales" / "earlier")["counts"]["rows"] == 16

    by_vllm = read_table(run / "rationales" / "tiny_a", RATIONALE_SCHEMA).sort_by("id").to_pylist()
    by_api = read_table(run / "rationales" / "api", RATIONALE_SCHEMA).sort_by("id").to_pylist()
    same = ("id", "dataset", "prompt", "rationale", "num_prompt_tokens", "num_generated_tokens", "finish_reason",
            "sampling_params", "error")
    # the same prompt, tokens and greedy decoding: the server's completions are the engine's, and usage counts them
    assert [{k: r[k] for k in same} for r in by_api] == [{k: r[k] for k in same} for r in by_vllm]
    assert {r["model"] for r in by_api} == {"tiny-llama"} and {r["teacher"] for r in by_api} == {"api"}
    api_manifest = read_manifest(run / "rationales" / "api")
    assert set(api_manifest) == set(vllm_manifest) and set(api_manifest["counts"]) == set(vllm_manifest["counts"])
    assert api_manifest["model_path"] == f"{url}/completions"
    assert api_manifest["counts"]["generated_tokens"] == vllm_manifest["counts"]["generated_tokens"] > 0
