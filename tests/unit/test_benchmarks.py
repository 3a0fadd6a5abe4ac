"""The benchmark package's pure parts: every section module's entry point, result rows and the JSON layout, the
environment taken from the runtime, the step-log summary. No section runs here."""

import inspect
import json
import os
import subprocess
import sys

import pytest

from benchmarks import common, run, stages, train_baselines, train_breakdown
from benchmarks.common import Context, Failed, markdown
from benchmarks.driver import DriverResult
from benchmarks.stages import rank_summary
from benchmarks.startup import StartupResult
from benchmarks.train import overhead


def test_every_section_module_exposes_its_entry_point():
    assert set(run.MODULES) == set(run.SECTIONS) == set(run.TABLE_ORDER)
    for name, module in run.MODULES.items():
        assert module.SECTION == name
        assert isinstance(module.PER_MODEL, bool)
        assert callable(module.run)
    assert {name for name, module in run.MODULES.items() if module.PER_MODEL} == {"gen", "train", "train_trl", "eval"}


def test_results_render_as_rows_and_one_table():
    driver = DriverResult("driver", {"problems": 10, "load_problems": {"seconds": 1.0, "peak_rss_mb": 5,
                                                                       "rss_before_mb": 2},
                                     "build_training_table": {"seconds": 2.0, "peak_rss_mb": 7, "rss_before_mb": 3}})
    failed = Failed("gen", {"error": "Traceback (most recent call last):\nValueError: boom"}, key="tiny")
    startup = StartupResult("startup", {
        "demo_generate": {"returncode": 0, "first_shard_file_s": 20.0, "ray_started_s": 4.0, "pool_started_s": 5.0,
                          "actors_ready_s": [15.0, 16.0]},
        "ray_start": {"import_s": 0.5, "init_s": 3.0},
        "bare_engine": {"import_s": 6.0, "engine_s": 4.0, "first_batch_s": 2.0, "first_batch_rows": 4},
        "run_tiny": {"total_s": 3.0, "to_first_shard_s": 1.0, "to_first_train_step_s": 2.0, "returncode": 0}})
    assert [r[1] for r in driver.rows()] == ["load_problems, 10 problems", "build_training_table, 10 problems"]
    assert failed.rows() == [("gen tiny", "ERROR", "", "", "", "", "ValueError: boom")]
    assert all(len(row) == len(common.HEADER) for row in driver.rows() + startup.rows())
    table = run.table({"startup": [startup], "driver": [driver], "gen": [failed]})
    lines = table.splitlines()
    assert lines[0].startswith("| benchmark") and set(lines[1]) <= {"|", "-"}
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["gen tiny", "driver", "driver"] + ["startup"] * 3
    assert " 13.00 " in table  # the bare reference: ray.init + vLLM's import + LLM()


def test_results_json_keeps_per_model_sections_under_their_model():
    gen = Failed("gen", {"error": "x"}, key="tiny", seconds=1.5, loadavg_before=[0.1, 0.2, 0.3])
    driver = DriverResult("driver", {"problems": 1}, seconds=2.0)
    document = run.results_json({"quick": True}, {"gen": [gen], "driver": [driver]})
    assert document == {"quick": True,
                        "gen": {"tiny": {"error": "x", "section_seconds": 1.5, "loadavg_before": [0.1, 0.2, 0.3]}},
                        "driver": {"problems": 1, "section_seconds": 2.0}}
    json.dumps(document)


def test_markdown_pads_columns():
    table = markdown([("a", "b", "", "", "", "", "long note")])
    widths = {len(line) for line in table.splitlines()}
    assert len(widths) == 1


def test_arguments_pick_sections_and_models():
    args = run.parse(["--quick", "--only", "driver"])
    assert args.only == ["driver"] and args.models == ("tiny",)
    assert run.parse([]).models == ("tiny", "smollm2")
    with pytest.raises(SystemExit):
        run.parse(["--only", "nope"])
    with pytest.raises(SystemExit):
        run.parse(["--models", "huge"])


def test_environment_comes_from_the_runtime(monkeypatch, tmp_path):
    from tinyllm_ray import runtime

    for key in [*runtime.teacher_env(False, allocator="system"), *runtime.WORKER_ENV, "LD_PRELOAD", "MALLOC_CONF",
                "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"]:
        monkeypatch.delenv(key, raising=False)
    common.set_env(tmp_path)
    for key, value in runtime.teacher_env(False, allocator="system").items():
        assert os.environ[key] == value
    for key, value in runtime.WORKER_ENV.items():
        assert os.environ[key] == value
    assert "LD_PRELOAD" not in os.environ  # this process and its plain-loop children choose their own allocator
    assert os.environ["VLLM_CACHE_ROOT"].startswith(str(tmp_path))


def test_rank_summary_reads_a_step_log(tmp_path):
    log = tmp_path / "x.rank0.jsonl"
    events = [{"t": 10.0, "event": "enter", "torch_threads": 1}]
    events += [{"t": 11.0 + k, "event": "step", "tokens": 100 * (k + 1), "preempted": 2 * k} for k in range(4)]
    events.append({"t": 16.0, "event": "exit"})
    log.write_text("\n".join(json.dumps(e) for e in events))
    rank = rank_summary(log, t0=9.0, total=8.0)
    assert rank["steps"] == 4 and rank["steady_steps"] == 3 and rank["steady_tokens"] == 300
    assert rank["step_seconds"] == [1.0, 1.0, 1.0] and rank["preemptions_per_step"] == 2.0
    assert rank["first_step_after_s"] == 2.0 and rank["export_s"] == 2.0


def test_overhead_is_a_ratio_of_steady_rates():
    assert overhead({"steady_tokens_per_s": 110.0}, {"steady_tokens_per_s": 100.0}) == 0.1
    assert overhead({}, {"steady_tokens_per_s": 100.0}) is None


def test_trl_baseline_gets_our_sequences_as_prompt_completion_pairs():
    """The TRL baseline's rows (no trl import): every task with a target, rendered as our stage renders it."""
    from tinyllm_ray.prompts import student_prompt
    from tinyllm_ray.training_data import tasks_for

    tasks = tasks_for("predict: ", 1.0, [("t1", "explain: ", 0.5)])
    batches = [{"input": ["q1", "q2"], "answer": ["a1", "a2"], "rationale__t1": ["r1", None]},
               {"input": ["q3", "q4"], "answer": ["a3", "a4"], "rationale__t1": [" ", "r4"]}]
    rows, per_step = train_baselines.sft_examples(batches, tasks)
    assert per_step == [3, 3]
    assert rows[:3] == [{"prompt": student_prompt("predict: ", "q1"), "completion": "a1"},
                        {"prompt": student_prompt("explain: ", "q1"), "completion": "r1"},
                        {"prompt": student_prompt("predict: ", "q2"), "completion": "a2"}]
    assert rows[-1] == {"prompt": student_prompt("explain: ", "q4"), "completion": "r4"}
    assert train_baselines.speed_ratio({"steady_tokens_per_s": 90.0}, {"steady_tokens_per_s": 100.0}) == 0.9
    # the benchmark imports without TRL (a benchmark-only extra): sys.modules["trl"] = None makes `import trl` fail
    code = "import sys; sys.modules['trl'] = None; import benchmarks.run, benchmarks.train_baselines"
    subprocess.run([sys.executable, "-c", code], cwd=common.REPO, check=True)


def test_context_is_frozen(tmp_path):
    ctx = Context(tmp=tmp_path)
    with pytest.raises(AttributeError):
        ctx.quick = True


def test_what_the_benchmarks_use_from_the_product_exists():
    from tinyllm_ray.generation_plan import demos_from_pool, sampling_dict  # noqa: F401
    from tinyllm_ray.teachers.vllm import engine_kwargs, render_prompt  # noqa: F401
    from tinyllm_ray.train import load_rationales, train
    from tinyllm_ray.train_worker import _load_model, _open_rank0_sinks, export, fit, setup  # noqa: F401

    assert "loop" in inspect.signature(train).parameters
    assert "on_step" in inspect.signature(fit).parameters


@pytest.mark.parametrize("make", [lambda: stages.make_timed_loop("/nowhere/log"),
                                  lambda: train_breakdown.make_loop("/nowhere/out.json", 1)],
                         ids=["timed_loop", "breakdown_loop"])
def test_worker_loops_unpickle_where_benchmarks_is_not_importable(make, tmp_path):
    """Ray ships a Train loop to workers that cannot import ``benchmarks``: it must travel by value."""
    import cloudpickle

    code = "import pickle, sys; loop = pickle.loads(sys.stdin.buffer.read()); assert callable(loop)"
    done = subprocess.run([sys.executable, "-c", code], input=cloudpickle.dumps(make()), cwd=tmp_path,
                          capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_the_steady_window_holds_the_same_rows_for_lead_shards_and_even_batches():
    from benchmarks.stages import steady_window

    shards = [(float(t), rows, 10 * rows, 5 * rows, 0) for t, rows in enumerate([4, 4, 8, 16, 16, 16, 16, 16])]
    batches = [(float(t), 16, 160, 80, 0) for t in range(6)]
    pipeline, baseline = steady_window(shards), steady_window(batches)
    assert pipeline["problems"] == baseline["problems"] == 64 and pipeline["generated_tokens"] == 320
    assert (pipeline["from"], pipeline["seconds"], pipeline["first_result"]) == (3.0, 4.0, 5)
    assert (baseline["from"], baseline["seconds"], baseline["first_result"]) == (1.0, 4.0, 3)
    assert steady_window(batches[:2]) is None  # no two results after the first third


def test_the_startup_timeline_is_read_from_a_runs_log():
    from datetime import datetime

    from benchmarks.startup import log_timeline

    log = "\n".join([
        "2026-12-02 10:00:04,000\tINFO worker.py:2038 -- Started a local Ray instance.",
        "2026-12-02 10:00:05,000 INFO tinyllm_ray: teacher a: 5 shard(s) to write (rationales of 5 shards)",
        "2026-12-02 10:00:05,500 INFO tinyllm_ray: teacher b: 5 shard(s) to write (rationales of 5 shards)",
        "2026-12-02 10:00:30,000 INFO tinyllm_ray: teacher b: an actor was ready 20.5 s after its pool started (its "
        "process started at 1.0 s, its constructor at 4.0 s, the teacher's imports and engine build took 16.5 s)",
        "2026-12-02 10:00:30,000 INFO tinyllm_ray: teacher b: shard 0 written (4 rows in 4.0 s), 24.5 s after its pool",
        "2026-12-02 10:01:00,250 INFO tinyllm_ray: train started",
        "(RayTrainWorker pid=7) [train] step 1/3 loss 2.1",
    ])
    timeline = log_timeline(log, datetime(2026, 12, 2, 10, 0, 0).timestamp())
    assert (timeline["ray_started_s"], timeline["pool_started_s"], timeline["actors_ready_s"]) == (4.0, 5.0, [26.0])
    assert timeline["first_shard_logged_s"] == 30.0 and timeline["first_train_step_s"] == 60.25
    assert timeline["actor_startup"][0].startswith("teacher b: an actor was ready 20.5 s")
