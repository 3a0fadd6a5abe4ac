"""The OpenAI-compatible teacher (``kind: openai``): a hosted model, or a vLLM / SGLang server, called over HTTP
from Ray Data actors. Same prompts (tinyllm_ray/prompts.py), rows, shards and manifest as a vLLM teacher; token
counts and finish reasons come from each response.

Each actor runs one asyncio event loop in a thread with one ``httpx.AsyncClient``: the actor's shard threads hand
it their rows and wait, and at most ``request.requests_in_flight`` requests are open at once across all of them.
A request that gets a 429, a 5xx, a timeout, a dropped connection or a malformed answer is retried with backoff
(:mod:`tinyllm_ray.teachers.request_policy`, honouring Retry-After); a row whose retries run out, or that the server
refuses (400: e.g. a prompt too long), is an error row. 401 / 403 / 404 mean the endpoint refuses the whole teacher:
the call raises. The API key is read from the variable ``api_key_env`` names and goes only into request headers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tinyllm_ray import prompts
from tinyllm_ray.generation_plan import GenerationError
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.teacher_config import OpenAITeacherConfig
from tinyllm_ray.teachers.base import Rationales, placement_args, rationale_row
from tinyllm_ray.teachers.request_policy import (
    RequestSpacing, RetryPolicy, fatal_status, parse_retry_after, per_actor_rate, redact, retry_delay,
    retryable_status,
)

PATHS = {"chat": "/chat/completions", "completions": "/completions"}
BODY_EXCERPT = 300  # characters of a refused request's response body kept in the row's error


class EndpointRefusedError(GenerationError):
    """The endpoint refuses every request of this teacher (bad key, no access, wrong URL or model)."""


# ---------------------------------------------------------------- pure: checks, requests, answers

def endpoint_url(teacher: OpenAITeacherConfig) -> str:
    return teacher.base_url.rstrip("/") + PATHS[teacher.api]


def endpoint_problems(teacher: OpenAITeacherConfig, environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """Why the teacher's endpoint cannot be called as configured, each naming its dotted key (empty: it can)."""
    where, found = f"teachers.{teacher.name}", []
    parts = urlsplit(teacher.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        found.append(f"{where}.base_url: {teacher.base_url!r} is not an http(s) URL with a host, e.g. "
                     "http://127.0.0.1:8000/v1")
    elif parts.username or parts.password or parts.query or parts.fragment:
        # a credential in the URL would land in the manifest; the key belongs in api_key_env's variable
        found.append(f"{where}.base_url: give the API root only (no user:password@, query or fragment); the key "
                     "goes in the variable api_key_env names")
    if teacher.api_key_env and not environ.get(teacher.api_key_env):
        found.append(f"{where}.api_key_env: the environment variable {teacher.api_key_env} is not set (export it "
                     "before running, or set api_key_env: null for a server without authentication)")
    return found


def request_body(teacher: OpenAITeacherConfig, text: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """The JSON body asking for one completion of ``text`` with the pass's sampling (config.SamplingConfig)."""
    body: dict[str, Any] = {"model": teacher.model, "max_tokens": sampling["max_tokens"],
                            "temperature": sampling["temperature"], "top_p": sampling["top_p"]}
    if sampling.get("seed") is not None:
        body["seed"] = sampling["seed"]
    if sampling.get("stop"):
        body["stop"] = list(sampling["stop"])
    if teacher.api == "chat":
        body["messages"] = prompts.chat_messages(text, teacher.system_prompt)
    else:
        body["prompt"] = text
    return {**body, **teacher.extra_body}


def prompt_column(body: dict[str, Any]) -> str:
    """What the rows' ``prompt`` records: the prompt sent, or for chat the messages sent (as JSON; the server
    applied its template)."""
    return body["prompt"] if "prompt" in body else json.dumps(body["messages"], ensure_ascii=False)


class MalformedAnswerError(ValueError):
    """A 200 response whose JSON does not hold a completion."""


@dataclass(frozen=True)
class Answer:
    """One completion as the row records it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def parse_answer(api: str, payload: Any) -> Answer:
    """The first choice of a (chat) completion response and its ``usage`` token counts (0 when the server gives
    none)."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedAnswerError("the response has no choices")
    choice = choices[0]
    if api == "chat":
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if text is None and not isinstance(message, dict):
            raise MalformedAnswerError("choices[0] has no message")
    else:
        text = choice.get("text")
        if text is None:
            raise MalformedAnswerError("choices[0] has no text")
    if text is not None and not isinstance(text, str):
        raise MalformedAnswerError("choices[0]'s text is not a string")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    try:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError) as err:
        raise MalformedAnswerError(f"usage holds no token counts: {err}") from None
    return Answer((text or "").strip(), str(choice.get("finish_reason") or "stop"), prompt_tokens, completion_tokens)


@dataclass(frozen=True)
class Failure:
    """One attempt that produced no answer: why, and whether asking again may help."""

    message: str
    retryable: bool
    retry_after: float | None = None
    fatal: bool = False


# ---------------------------------------------------------------- the kind's driver-side functions

def prepare(teacher: OpenAITeacherConfig, layout: RunLayout) -> str:
    """On the driver: check the endpoint settings and read the key for the actors; returns the endpoint URL (the
    manifest's model_path)."""
    found = endpoint_problems(teacher)
    if found:
        raise GenerationError(f"teacher {teacher.name!r} cannot call its endpoint:\n" + "\n".join(found))
    teacher._api_key = os.environ[teacher.api_key_env] if teacher.api_key_env else None
    return endpoint_url(teacher)


def remote_args(teacher: OpenAITeacherConfig) -> dict[str, Any]:
    return {**placement_args(teacher.resources), "num_gpus": 0}


# ---------------------------------------------------------------- in the actor

class OpenAITeacher:
    """A :class:`~tinyllm_ray.teachers.base.Teacher` calling an OpenAI-compatible endpoint; thread-safe (every
    request runs on the one event loop this object owns)."""

    def __init__(self, teacher: OpenAITeacherConfig, model_path: str):
        import httpx

        self.config, self.url = teacher, model_path
        # the actor's own environment first (a cluster's secret), else the key the driver read
        self._key = (os.environ.get(teacher.api_key_env) if teacher.api_key_env else None) or teacher._api_key
        if teacher.api_key_env and not self._key:
            raise GenerationError(f"teacher {teacher.name!r}: the environment variable {teacher.api_key_env} is "
                                  "not set where its actors run")
        request = teacher.request
        self.policy = RetryPolicy(request.max_retries, request.backoff_initial_s, request.backoff_max_s)
        self.timeout_s = request.timeout_s
        self.rng = random.Random()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"http-teacher-{teacher.name}",
                                        daemon=True)
        self._thread.start()
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        slots = request.requests_in_flight
        rate = per_actor_rate(request.max_requests_per_second, teacher.resources.concurrency)

        async def setup():  # the client, semaphore and spacing belong to the loop's thread
            self.client = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(request.timeout_s),
                limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots))
            self.slots = asyncio.Semaphore(slots)
            self.spacing = RequestSpacing(rate) if rate else None

        asyncio.run_coroutine_threadsafe(setup(), self.loop).result()
        self._closed = False

    def rationales(self, problems: list[dict[str, Any]], demos: list[list[dict[str, Any]]], mode: str,
                   sampling: dict[str, Any]) -> Rationales:
        """Every row of the shard, each from its own request (concurrent up to ``request.requests_in_flight``)."""
        rows, bodies = [], []
        for problem, problem_demos in zip(problems, demos):
            text = prompts.teacher_prompt(problem, problem_demos, mode, self.config.instruction)
            bodies.append(request_body(self.config, text, sampling))
            rows.append(rationale_row(self.config, problem, sampling, prompt_column(bodies[-1])))
        if self._closed:
            raise GenerationError(f"teacher {self.config.name!r} was closed")
        asyncio.run_coroutine_threadsafe(self._fill_all(rows, bodies), self.loop).result()
        return Rationales(rows)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    async def _fill_all(self, rows: list[dict], bodies: list[dict]) -> None:
        tasks = [asyncio.ensure_future(self._fill(row, body)) for row, body in zip(rows, bodies)]
        try:
            await asyncio.gather(*tasks)
        finally:  # one refused request fails the call: the others need not go on
            for task in tasks:
                task.cancel()

    async def _fill(self, row: dict, body: dict) -> None:
        """Ask until an answer, a refusal or the last retry; the row gets the answer or the last failure."""
        for retry in range(self.policy.attempts):
            outcome = await self._attempt(body)
            if isinstance(outcome, Answer):
                row.update(rationale=outcome.text, finish_reason=outcome.finish_reason, error=None,
                           num_prompt_tokens=outcome.prompt_tokens, num_generated_tokens=outcome.completion_tokens)
                return
            if outcome.fatal:
                raise EndpointRefusedError(redact(f"teacher {self.config.name!r}: {outcome.message}; check "
                                                  f"base_url, model and the key in {self.config.api_key_env}",
                                                  self._key))
            if not outcome.retryable or retry == self.policy.max_retries:
                break
            await asyncio.sleep(retry_delay(self.policy, retry, outcome.retry_after, self.rng))
        attempts = f" (after {retry + 1} attempts)" if retry else ""
        row["error"] = redact(f"{outcome.message}{attempts}", self._key)[:2000]

    async def _attempt(self, body: dict) -> Answer | Failure:
        import httpx

        async with self.slots:
            if self.spacing is not None:
                await asyncio.sleep(self.spacing.reserve(self.loop.time()))
            try:  # httpx's timeout is per phase (connect, each read): wait_for bounds the whole request
                response = await asyncio.wait_for(self.client.post(self.url, json=body), self.timeout_s)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                return Failure(f"no complete answer within request.timeout_s={self.timeout_s:g}s from {self.url}",
                               retryable=True)
            except httpx.RequestError as err:  # refused or dropped connection, a body cut short or undecodable
                return Failure(f"{type(err).__name__} from {self.url}: {err}", retryable=True)
        return self._read(response)

    def _read(self, response) -> Answer | Failure:
        status = response.status_code
        if status != 200:
            message = f"HTTP {status} from {self.url}: {response.text[:BODY_EXCERPT]}"
            return Failure(message, retryable=retryable_status(status), fatal=fatal_status(status),
                           retry_after=parse_retry_after(response.headers.get("retry-after"), _unix_now()))
        try:
            return parse_answer(self.config.api, response.json())
        except (ValueError, AttributeError) as err:  # json's errors are ValueErrors, so is MalformedAnswerError
            return Failure(f"malformed answer from {self.url}: {type(err).__name__}: {err}", retryable=True)


def _unix_now() -> float:
    import time

    return time.time()
