"""The `openai` teacher kind against a real fault-injecting HTTP server on 127.0.0.1 (tests/fault_server.py): 429
with Retry-After, 500, timeouts, malformed JSON and a connection dropped mid-response. After each, every problem
has exactly one row in order, failures are error rows, and a rerun asks again for the failed rows only."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from fault_server import FaultServer, answer_text, query_question
from tinyllm_ray import prompts
from tinyllm_ray.config import DataConfig, fingerprint_view, load_config
from tinyllm_ray.data import load_problems
from tinyllm_ray.generation_plan import demos_from_pool, has_failed_rows, kept_rows, merge_rows, rationale_stats
from tinyllm_ray.preflight import problems as preflight_problems
from tinyllm_ray.schemas import RATIONALE_SCHEMA, write_table
from tinyllm_ray.teacher_config import OpenAITeacherConfig
from tinyllm_ray.teachers import kind_of
from tinyllm_ray.teachers.openai_api import EndpointRefusedError, OpenAITeacher, parse_answer, prepare

KEY_ENV, KEY = "TINYLLM_TEST_TEACHER_KEY", "sk-test-9f8e7d6c"
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 32, "seed": 0, "stop": ["\nQuestion:"]}
FAST_RETRIES = {"max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 20}


@pytest.fixture(scope="module")
def shard():
    """Eight demo problems and one demonstration each, as the actor hands them to a teacher."""
    pool = load_problems(DataConfig(format="demo", max_train_problems=8), "train")
    problems = pool.to_pylist()
    return problems, demos_from_pool(pool, problems, 0, 1, seed=0)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def api_teacher(server: FaultServer, **fields) -> OpenAITeacherConfig:
    fields.setdefault("request", FAST_RETRIES)
    return OpenAITeacherConfig(kind="openai", name="api", model="served-model", base_url=server.url,
                               api_key_env=KEY_ENV, **fields)


def run_teacher(config: OpenAITeacherConfig, problems, demos) -> list[dict]:
    teacher = OpenAITeacher(config, prepare(config, None))
    try:
        rows = teacher.rationales(problems, demos, "rationale", SAMPLING).rows
    finally:
        teacher.close()
    assert [r["id"] for r in rows] == [p["id"] for p in problems]  # every problem once, in order
    assert KEY not in json.dumps(rows)
    return rows


def question_of(problem: dict) -> str:
    return query_question(prompts.teacher_forcing_prompt(problem, []))


def test_completions_rows_carry_the_prompt_usage_and_finish_reason(shard):
    problems, demos = shard
    with FaultServer(key=KEY) as server:
        rows = run_teacher(api_teacher(server, api="completions"), problems, demos)
    assert [r["prompt"] for r in rows] == [prompts.teacher_forcing_prompt(p, d) for p, d in zip(problems, demos)]
    assert [r["rationale"] for r in rows] == [answer_text(question_of(p)) for p in problems]
    assert all(r["error"] is None and r["finish_reason"] == "stop" for r in rows)
    assert all(r["num_prompt_tokens"] == len(r["prompt"].split()) and r["num_generated_tokens"] > 0 for r in rows)
    body = server.bodies[-1]
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "seed", "stop")} == {
        "model": "served-model", **SAMPLING}
    assert pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA).num_rows == len(problems)


def test_chat_sends_system_and_user_messages(shard):
    problems, demos = shard
    with FaultServer(key=KEY) as server:
        rows = run_teacher(api_teacher(server, system_prompt="You explain answers.", extra_body={"top_k": 1}),
                           problems[:2], demos[:2])
    asked = prompts.teacher_forcing_prompt(problems[0], demos[0])
    [sent] = [b for b in server.bodies if b["messages"][-1]["content"] == asked]  # requests arrive in any order
    assert sent["messages"] == [{"role": "system", "content": "You explain answers."},
                                {"role": "user", "content": asked}]
    assert sent["top_k"] == 1 and "prompt" not in sent
    assert json.loads(rows[0]["prompt"]) == sent["messages"]
    assert rows[0]["rationale"] == answer_text(question_of(problems[0]))


FAULTS = {  # name: (what the failing questions get on each attempt, do they end as errors, error text)
    "429 with Retry-After, then ok": ("429", False, None),
    "500 every time": ("500", True, "HTTP 500"),
    "malformed JSON every time": ("malformed", True, "malformed answer"),
    "malformed JSON once": ("malformed-once", False, None),
    "connection dropped mid-response every time": ("drop", True, "RemoteProtocolError"),
    "connection dropped once": ("drop-once", False, None),
    "no answer before the timeout": ("hang", True, "timeout_s"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_leave_one_row_per_problem_and_a_rerun_asks_for_the_failed_ones_only(shard, tmp_path, fault):
    problems, demos = shard
    outcome, fails, message = FAULTS[fault]
    faulty = {question_of(p) for p in problems[1:4]}

    def rule(question: str, attempt: int) -> str:
        if question not in faulty:
            return "ok"
        if outcome == "429":
            return "429" if attempt == 0 else "ok"
        if outcome.endswith("-once"):
            return outcome.removesuffix("-once") if attempt == 0 else "ok"
        return outcome

    request = {**FAST_RETRIES, "timeout_s": 5, "max_retries": 1} if outcome == "hang" else FAST_RETRIES
    with FaultServer(rule, key=KEY) as server:
        rows = run_teacher(api_teacher(server, request=request), problems, demos)
    failed = [r for r in rows if r["error"]]
    assert server.early == []  # no retry came before the Retry-After the server gave
    if not fails:
        assert failed == []
        assert all(server.requests_for(q) == 2 for q in faulty)
        return
    attempts = request["max_retries"] + 1
    assert [r["id"] for r in failed] == [p["id"] for p in problems[1:4]]
    assert all(message in r["error"] and f"after {attempts} attempts" in r["error"] for r in failed)
    assert all(r["finish_reason"] == "error" and r["rationale"] == "" for r in failed)
    assert all(server.requests_for(q) == attempts for q in faulty)

    # The shard as the actor writes it; a rerun (the server healthy again) asks for its failed rows only.
    shard_file = tmp_path / "shard-00000.parquet"
    stats = rationale_stats(rows, {p["id"]: p for p in problems})
    assert stats["errors"] == 3
    write_table(pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA), shard_file, footer={"stats": stats})
    assert has_failed_rows(shard_file)
    kept = kept_rows(shard_file)
    asked = [i for i, p in enumerate(problems) if p["id"] not in kept]
    with FaultServer(key=KEY) as healthy:
        fresh = run_teacher(api_teacher(healthy), [problems[i] for i in asked], [demos[i] for i in asked])
    assert sorted(healthy.asked) == sorted(faulty) and set(healthy.asked.values()) == {1}
    merged = merge_rows(problems, kept, fresh)
    assert [r["id"] for r in merged] == [p["id"] for p in problems]
    assert all(r["error"] is None for r in merged)
    assert merged[0] == rows[0]  # a kept row is the earlier one, not asked again


def test_a_refused_key_fails_the_teacher_without_naming_the_key(shard, monkeypatch):
    problems, demos = shard
    with FaultServer(key="sk-the-right-one") as server:
        with pytest.raises(EndpointRefusedError, match="HTTP 401") as err:
            run_teacher(api_teacher(server), problems, demos)
    assert KEY not in str(err.value) and KEY_ENV in str(err.value)


def test_a_refused_request_is_an_error_row_without_retries(shard):
    problems, demos = shard
    refused = question_of(problems[0])
    with FaultServer(lambda q, a: "400" if q == refused else "ok", key=KEY) as server:
        rows = run_teacher(api_teacher(server), problems[:2], demos[:2])
    assert "HTTP 400" in rows[0]["error"] and "attempts" not in rows[0]["error"]
    assert rows[1]["error"] is None
    assert server.requests_for(refused) == 1


def test_answers_are_parsed_or_refused():
    assert parse_answer("chat", {"choices": [{"message": {"content": " hi "}, "finish_reason": "length"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}}) == \
        parse_answer("completions", {"choices": [{"text": "hi", "finish_reason": "length"}],
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    for api, payload in [("chat", {}), ("chat", {"choices": []}), ("chat", {"choices": [{"message": None}]}),
                         ("completions", []), ("completions", {"choices": [{"text": 3}]}),
                         ("completions", {"choices": [{"message": {"content": "chat-shaped"}}]})]:
        with pytest.raises(ValueError):
            parse_answer(api, payload)


def test_config_keys_that_only_say_how_to_call_do_not_change_the_rationales():
    base = dict(kind="openai", name="api", model="m", base_url="http://127.0.0.1:8000/v1")
    view = fingerprint_view(OpenAITeacherConfig(**base))
    moved = OpenAITeacherConfig(**{**base, "base_url": "https://other.example/v1", "api_key_env": "OTHER_KEY",
                                   "request": {"requests_in_flight": 64, "timeout_s": 5, "max_retries": 0,
                                               "max_requests_per_second": 2.0},
                                   "resources": {"concurrency": 4}, "max_error_rate": 0.5})
    assert fingerprint_view(moved) == view
    assert fingerprint_view(OpenAITeacherConfig(**base, api="completions")) != view
    assert fingerprint_view(OpenAITeacherConfig(**base, sampling={"temperature": 0.7})) != view


def test_a_pasted_key_is_refused_and_never_repeated():
    with pytest.raises(ValueError) as err:
        OpenAITeacherConfig(kind="openai", name="api", model="m", base_url="http://h/v1", api_key_env=KEY)
    assert "NAME of an environment variable" in str(err.value)
    from tinyllm_ray.config import ConfigError

    with pytest.raises(ConfigError) as loaded:
        pasted = dict(kind="openai", name="x", model="m", base_url="http://h/v1", api_key_env=KEY,
                      rationale_prefix="x: ")
        load_config("tiny", [f"teachers.tiny_b={json.dumps(pasted)}"])
    assert "NAME of an environment variable" in str(loaded.value) and KEY not in str(loaded.value)


def test_preflight_names_an_unset_key_variable_and_a_bad_url(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    api = dict(kind="openai", name="api", model="m", base_url="ftp://nowhere", api_key_env=KEY_ENV,
               rationale_prefix="api: ")
    job = load_config("tiny", [f"teachers.tiny_b={json.dumps(api)}"])
    found = preflight_problems(job, "generate", only=["api"])
    assert any(f.startswith("teachers.api.base_url:") for f in found)
    assert any(f.startswith("teachers.api.api_key_env:") and KEY_ENV in f for f in found)
    monkeypatch.setenv(KEY_ENV, KEY)
    job = load_config("tiny", [f"teachers.tiny_b={json.dumps({**api, 'base_url': 'http://127.0.0.1:1/v1'})}"])
    assert preflight_problems(job, "generate", only=["api"]) == []
    assert kind_of(job.teachers[1]).remote_args(job.teachers[1])["num_gpus"] == 0
