"""Section ``train``: student training, per model. The real ``train`` stage (Ray Train, 1 worker, DeepSpeed ZeRO-0
and ZeRO-2) against a plain single-process PyTorch loop over the same Collator batches, same optimizer and steps,
in back-to-back rounds on glibc's allocator and on jemalloc; then ZeRO-2 once and a plain loop on all cores."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Context, Row, SectionResult, fmt, wait_quiet
from benchmarks.jobs import gen_for_training, with_training
from benchmarks.plain_loop import padding_waste, run_plain_loop_process
from benchmarks.stages import run_train_stage

SECTION = "train"
PER_MODEL = True
# Each round runs these back to back; every ratio is taken within its round (see run).
TRAIN_ROUND = (("plain", "system"), ("zero0", "jemalloc"), ("plain", "jemalloc"), ("zero0", "system"))


def overhead(plain: dict[str, Any], staged: dict[str, Any]) -> float | None:
    """How much slower ``staged`` trained than ``plain`` at steady state (0.1 = 10 % slower), by tokens/s."""
    a, b = plain.get("steady_tokens_per_s"), staged.get("steady_tokens_per_s")
    return round(a / b - 1, 3) if a and b else None


def median_or_none(values: list[float | None]) -> float | None:
    return statistics.median(values) if None not in values else None


def train_shape(model_key: str, quick: bool) -> tuple[int, int]:
    """(steps, micro-batch size) of a training comparison; the TRL baseline (``train_baselines``) uses the same.
    Enough steps that start-up transients (Ray Data ingest, the previous variant's workers exiting) average out."""
    return (4 if quick else (30 if model_key == "tiny" else 14)), (2 if (quick or model_key == "smollm2") else 4)


def run(ctx: Context, model_key: str) -> "TrainResult":
    tmp, quick = ctx.tmp, ctx.quick
    steps, mb = train_shape(model_key, quick)
    config = gen_for_training(model_key, tmp, quick, {"num_workers": 1, "micro_batch_size": mb, "max_steps": steps})
    out: dict[str, Any] = {"model": config.student.model, "micro_batch_size": mb, "steps": steps,
                           "padding": padding_waste(config), "rounds": []}

    def plain(threads: int, allocator: str) -> dict[str, Any]:
        waited = wait_quiet()
        print(f"[bench] train {model_key}: plain PyTorch loop, {threads} thread(s), {allocator} allocator",
              flush=True)
        return {**run_plain_loop_process(config, steps, threads, allocator), "allocator": allocator,
                "waited_for_quiet_s": waited}

    def staged(stage: int, allocator: str, label: str) -> dict[str, Any]:
        waited = wait_quiet()
        print(f"[bench] train {model_key}: Ray Train + DeepSpeed ZeRO-{stage}, 1 worker, {allocator} allocator",
              flush=True)
        variant = with_training(config, zero_stage=stage, allocator=allocator)
        return {**run_train_stage(variant, tmp / "train_logs", label), "allocator": allocator,
                "waited_for_quiet_s": waited}

    # This VM's speed drifts within minutes, so the comparison runs in rounds: a plain loop and ZeRO-0 (what
    # training.zero_stage "auto" runs with one worker) on each allocator, back to back, with every ratio taken within
    # its round. Ray Train runs the loop in a thread, where glibc's allocator costs more than in a main thread, so
    # each allocator is also compared with itself: that is the framework's own overhead. As shipped (jemalloc)
    # against a plain script (glibc) is what a user sees.
    for index in range(1 if quick else 2):
        round_ = {}
        for kind, allocator in TRAIN_ROUND:
            round_[f"{kind}_{allocator}"] = (plain(1, allocator) if kind == "plain" else
                                             staged(0, allocator, f"{model_key}-r{index}-z0-{allocator}"))
        round_["overhead_same_allocator"] = {a: overhead(round_[f"plain_{a}"], round_[f"zero0_{a}"])
                                             for a in ("jemalloc", "system")}
        round_["overhead_as_shipped_vs_plain_script"] = overhead(round_["plain_system"], round_["zero0_jemalloc"])
        out["rounds"].append(round_)
    worker_threads = {r["zero0_jemalloc"]["ranks"][0]["torch_threads"] for r in out["rounds"]
                      if r["zero0_jemalloc"].get("ranks")}
    if worker_threads != {1}:
        out["note"] = f"the Train worker ran {worker_threads} torch threads; the plain loops ran 1"
    for key in ("jemalloc", "system"):
        out[f"zero0_overhead_same_allocator_{key}"] = median_or_none(
            [r["overhead_same_allocator"][key] for r in out["rounds"]])
    out["zero0_overhead_as_shipped_vs_plain_script"] = median_or_none(
        [r["overhead_as_shipped_vs_plain_script"] for r in out["rounds"]])
    # ZeRO-2 with one worker: what the explicit setting costs, against the plain loop run right after it
    out["ray_deepspeed_zero2"] = staged(2, "jemalloc", f"{model_key}-z2")
    out["plain_after_zero2"] = plain(1, "jemalloc")
    out["zero2_overhead_same_allocator"] = overhead(out["plain_after_zero2"], out["ray_deepspeed_zero2"])
    if (os.cpu_count() or 1) != 1:
        out[f"plain_{os.cpu_count()}t"] = plain(os.cpu_count() or 1, "system")
    return TrainResult(SECTION, out, key=model_key)


@dataclass(frozen=True)
class TrainResult(SectionResult):
    def table_rows(self) -> list[Row]:
        t, bench = self.data, self.label
        rows: list[Row] = []

        def train_row(label: str, d: dict[str, Any], note: str) -> None:
            step = (f"step {d.get('steady_step_s')} s (median {d.get('median_step_s')}), "
                    f"{d.get('preemptions_per_step')} preemptions/step")
            rows.append((bench, label, fmt(d["stage_seconds"], 2) if "stage_seconds" in d else "",
                         fmt(d.get("steady_tokens_per_s")) + " train tok/s", "", "", f"{step}, {note}"))

        for index, round_ in enumerate(t.get("rounds", [])):
            for kind, allocator in TRAIN_ROUND:
                d = round_[f"{kind}_{allocator}"]
                if kind == "plain":
                    train_row(f"round {index + 1}: plain PyTorch, 1 thr, {allocator}", d,
                              f"start-up {d['startup_s']} s, first step {d['first_step_s']} s")
                else:
                    train_row(f"round {index + 1}: Ray Train+DS ZeRO-0, {allocator}", d,
                              f"first step after {d.get('startup_to_first_step_s')} s, "
                              f"{d['ranks'][0]['torch_threads'] if d['ranks'] else '?'} torch thr")
            rows.append((bench, f"round {index + 1}: overhead", "", "", "", "",
                         f"ZeRO-0 vs plain, same allocator: jemalloc "
                         f"{fmt(round_['overhead_same_allocator']['jemalloc'], 3)}, glibc "
                         f"{fmt(round_['overhead_same_allocator']['system'], 3)}; as shipped (jemalloc) vs plain "
                         f"script (glibc) {fmt(round_['overhead_as_shipped_vs_plain_script'], 3)}"))
        if "ray_deepspeed_zero2" in t:
            train_row("Ray Train+DS ZeRO-2, jemalloc", t["ray_deepspeed_zero2"], "then the plain loop:")
            train_row("plain PyTorch, 1 thr, jemalloc", t["plain_after_zero2"],
                      f"ZeRO-2 overhead {fmt(t.get('zero2_overhead_same_allocator'), 3)}")
        for name in sorted(k for k in t if k.startswith("plain_") and k[6:-1].isdigit()):
            train_row(f"plain PyTorch, {t[name]['torch_threads']} thr, glibc", t[name], "all cores")
        rows.append((bench, "padding / overhead (median of rounds)", "", "", "", "",
                     f"pad fraction {t['padding']['pad_fraction']} (one batch: "
                     f"{t['padding'].get('length_groups_1', {}).get('pad_fraction')}); ZeRO-0 vs plain, same "
                     f"allocator: jemalloc {fmt(t.get('zero0_overhead_same_allocator_jemalloc'), 3)}, glibc "
                     f"{fmt(t.get('zero0_overhead_same_allocator_system'), 3)}; as shipped vs plain script "
                     f"{fmt(t.get('zero0_overhead_as_shipped_vs_plain_script'), 3)}"))
        return rows
