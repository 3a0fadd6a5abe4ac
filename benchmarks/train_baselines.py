"""Section ``train_trl``: the real ``train`` stage against TRL's ``SFTTrainer``, what a user would pick instead
(issue 21, point 3), per model, in back-to-back rounds so that every ratio is taken within its round.

TRL gets the same student, the same sequences in the same order (each micro-batch's answer and rationale tasks,
rendered as our stage renders them, as plain prompt/completion SFT pairs, loss on the completion only, as our
stage's labels), the same sequences in each optimiser step, max length, fp32, torch AdamW, lr, weight decay, clipping
at 1.0, one torch thread and the same steps; steady state leaves out step 1 for both, and both count non-pad input
tokens (``attention_mask``). The plain PyTorch loop runs in every round too, to split the gap into the framework's
cost and the step's. TRL needs the benchmark extra (``pip install -e '.[bench]'``); its child process:

    python -m benchmarks.train_baselines JOB_JSON STEPS THREADS     # prints its result as one JSON line
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Row, SectionResult, fmt, preempted, run_job_process, wait_quiet

SECTION = "train_trl"
PER_MODEL = True
INSTALL_HINT = "TRL is a benchmark-only extra: pip install -e '.[bench]' (or pip install 'trl>=1.16,<2')"


def sft_examples(batches: list[dict[str, list]], tasks) -> tuple[list[dict[str, str]], list[int]]:
    """Each micro-batch's sequences (``training_data.task_pairs``: every task with a target, as our stage renders
    it) as plain prompt/completion SFT rows, in order; and how many sequences each micro-batch holds."""
    from tinyllm_ray.training_data import task_pairs

    per_batch = [[pair for row in task_pairs(batch, tasks) for pair in row] for batch in batches]
    return ([{"prompt": prompt, "completion": target} for pairs in per_batch for _, prompt, target in pairs],
            [len(pairs) for pairs in per_batch])


def speed_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    """Our steady tokens/s over theirs (1.1 = ours 10 % faster)."""
    a, b = ours.get("steady_tokens_per_s"), theirs.get("steady_tokens_per_s")
    return round(a / b, 3) if a and b else None


def run_trl(config, steps: int, threads: int) -> dict[str, Any]:
    """``SFTTrainer`` on the plain loop's micro-batches (``plain_loop.training_batches``: exactly ``train()``'s),
    every optimiser step timed at its end by a callback, as the Train worker's ``on_step`` times ours."""
    import torch
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from benchmarks.plain_loop import training_batches
    from benchmarks.stages import rank_summary

    torch.set_num_threads(threads)
    t0 = time.time()
    batches, model_path, tasks = training_batches(config)
    batches = (batches * (steps // max(len(batches), 1) + 1))[:steps]  # as the plain loop cycles them
    training, student = config.training, config.student
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:  # as our stage's collator
        tokenizer.pad_token = tokenizer.eos_token
    rows, per_step = sft_examples(batches, tasks)
    torch.manual_seed(training.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    out_dir = Path(tempfile.mkdtemp(prefix="trl-sft-"))
    log = out_dir / "steps.rank0.jsonl"
    args = SFTConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=max(per_step),
        gradient_accumulation_steps=1, learning_rate=training.learning_rate, weight_decay=training.weight_decay,
        lr_scheduler_type="constant_with_warmup", warmup_steps=training.warmup_steps,
        optim="adamw_torch", max_grad_norm=1.0,  # torch AdamW and DeepSpeed's gradient_clipping, as ours
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,  # SFTConfig defaults bf16 and GC on
        max_length=student.max_input_tokens + student.max_target_tokens, packing=False, completion_only_loss=True,
        train_sampling_strategy="sequential", seed=training.seed, dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)

    class Counting(SFTTrainer):
        """Counts the real and padded input tokens of every micro-batch it trains on."""

        real = padded = loss_tokens = 0

        def get_train_dataloader(self):
            """Our micro-batches' sequences, step by step: fewer than ``per_device_train_batch_size`` where a
            rationale was filtered out (the one change to what a user's script gets, besides the counting)."""
            if len(self.train_dataset) != len(rows):
                raise RuntimeError(f"TRL kept {len(self.train_dataset)} of the {len(rows)} SFT rows")
            starts = list(itertools.accumulate([0, *per_step]))
            batches = [list(range(start, start + n)) for start, n in zip(starts, per_step)]
            dataset = self._remove_unused_columns(self.train_dataset, description="Training")
            return self.accelerator.prepare(DataLoader(dataset, batch_sampler=batches, collate_fn=self.data_collator))

        def training_step(self, model, inputs, *rest, **kwargs):
            self.real += int(inputs["attention_mask"].sum())
            self.padded += int(inputs["input_ids"].numel())
            self.loss_tokens += int((inputs["labels"] != -100).sum())  # completion only, as our labels
            return super().training_step(model, inputs, *rest, **kwargs)

    with open(log, "w") as handle:
        def note(**fields) -> None:
            handle.write(json.dumps({"t": time.time(), **fields}) + "\n")
            handle.flush()

        class Timer(TrainerCallback):
            """The step log :func:`stages.rank_summary` reads: the Train worker's format."""

            def on_train_begin(self, *_, **__):
                note(event="enter", torch_threads=torch.get_num_threads())

            def on_step_end(self, *_, **__):
                note(event="step", tokens=trainer.real, padded=trainer.padded, preempted=preempted(),
                     threads=torch.get_num_threads())

        trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                           callbacks=[Timer()])
        startup = time.time() - t0
        trainer.train()
        note(event="exit")
    total = time.time() - t0
    summary = rank_summary(log, t0, total)
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    steps_done = [e for e in events if e["event"] == "step"]
    shutil.rmtree(out_dir, ignore_errors=True)
    out: dict[str, Any] = {"torch_threads": threads, "threads_at_last_step": steps_done[-1]["threads"],
                           "startup_s": round(startup, 2), "total_s": round(total, 2), "steps": len(steps_done),
                           "sequences_per_step": dict(sorted(Counter(per_step).items())),
                           "real_tokens": trainer_tokens(steps_done, "tokens"),
                           "padded_tokens": trainer_tokens(steps_done, "padded"), "loss_tokens": trainer.loss_tokens,
                           "rank": summary}
    out["pad_fraction"] = round(1 - out["real_tokens"] / max(out["padded_tokens"], 1), 3)
    del trainer, model
    gc.collect()
    if "steady_seconds" in summary:
        out["steady_tokens_per_s"] = round(summary["steady_tokens"] / summary["steady_seconds"], 1)
        out["steady_step_s"] = round(summary["steady_seconds"] / summary["steady_steps"], 3)
        out["median_step_s"] = summary["median_step_s"]
        out["preemptions_per_step"] = summary.get("preemptions_per_step")
        out["first_step_after_s"] = summary["first_step_after_s"]
    return out


def trainer_tokens(steps: list[dict[str, Any]], key: str) -> int:
    return steps[-1][key] if steps else 0


def run_trl_process(config, steps: int, threads: int) -> dict[str, Any]:
    """:func:`run_trl` in a fresh process on the system allocator: what a user's plain TRL script gets."""
    return run_job_process("benchmarks.train_baselines", config, steps, threads, {}, "TRL SFTTrainer")


def run(ctx, model_key: str) -> "TrlResult":
    """Rounds of our stage as shipped (1 worker, ZeRO ``auto`` = 0, allocator ``auto`` = glibc on CPU), the plain
    PyTorch loop (1 thread, glibc) and TRL, in ABC / CBA order so that a linear drift of the VM's speed cancels."""
    if importlib.util.find_spec("trl") is None:
        raise RuntimeError(INSTALL_HINT)
    from benchmarks.jobs import gen_for_training
    from benchmarks.plain_loop import run_plain_loop_process
    from benchmarks.stages import run_train_stage
    from benchmarks.train import train_shape

    steps, mb = train_shape(model_key, ctx.quick)
    config = gen_for_training(model_key, ctx.tmp, ctx.quick, {"num_workers": 1, "micro_batch_size": mb,
                                                             "max_steps": steps})
    import trl

    out: dict[str, Any] = {"model": config.student.model, "micro_batch_size": mb, "steps": steps,
                           "trl": trl.__version__, "rounds": []}
    logs = ctx.tmp / "train_trl_logs"
    variants = {"ours": lambda index: run_train_stage(config, logs, f"{model_key}-trl-r{index}"),
                "plain": lambda _: run_plain_loop_process(config, steps, 1, "system"),
                "trl": lambda _: run_trl_process(config, steps, 1)}
    for index in range(1 if ctx.quick else 2):
        round_: dict[str, Any] = {}
        for kind in (list(variants) if index % 2 == 0 else list(reversed(variants))):
            waited = wait_quiet()
            print(f"[bench] train_trl {model_key}: round {index + 1}, {kind}", flush=True)
            round_[kind] = {**variants[kind](index), "waited_for_quiet_s": waited}
        # the plain loop splits the gap: the framework's own cost (ours / plain) and the step's (plain / TRL)
        round_["ratios"] = {"ours_over_trl": speed_ratio(round_["ours"], round_["trl"]),
                            "ours_over_plain": speed_ratio(round_["ours"], round_["plain"]),
                            "plain_over_trl": speed_ratio(round_["plain"], round_["trl"])}
        out["rounds"].append(round_)
    for key in out["rounds"][0]["ratios"]:
        ratios = [r["ratios"][key] for r in out["rounds"]]
        out[key] = statistics.median(ratios) if None not in ratios else None
    return TrlResult(SECTION, out, key=model_key)


@dataclass(frozen=True)
class TrlResult(SectionResult):
    def table_rows(self) -> list[Row]:
        t, bench, rows = self.data, self.label, []
        for index, round_ in enumerate(t.get("rounds", [])):
            ours, plain, theirs, r = round_["ours"], round_["plain"], round_["trl"], round_["ratios"]
            rows.append((bench, f"round {index + 1}: Ray Train+DS (as shipped)", fmt(ours.get("stage_seconds"), 2),
                         fmt(ours.get("steady_tokens_per_s")) + " train tok/s", "", "",
                         f"step {ours.get('steady_step_s')} s, first step after "
                         f"{ours.get('startup_to_first_step_s')} s, p {ours.get('preemptions_per_step')}"))
            rows.append((bench, f"round {index + 1}: plain PyTorch, 1 thr, glibc", "",
                         fmt(plain.get("steady_tokens_per_s")) + " train tok/s", "", "",
                         f"step {plain.get('steady_step_s')} s, p {plain.get('preemptions_per_step')}"))
            rows.append((bench, f"round {index + 1}: TRL {t['trl']} SFTTrainer", "",
                         fmt(theirs.get("steady_tokens_per_s")) + " train tok/s", "", "",
                         f"step {theirs.get('steady_step_s')} s, p {theirs.get('preemptions_per_step')}, "
                         f"pad {theirs.get('pad_fraction')}; ours/TRL {fmt(r['ours_over_trl'], 3)}, ours/plain "
                         f"{fmt(r['ours_over_plain'], 3)}, plain/TRL {fmt(r['plain_over_trl'], 3)}"))
        last = t["rounds"][-1] if t.get("rounds") else {}
        rank = (last.get("ours", {}).get("ranks") or [{}])[0]
        ours_tokens = rank.get("first_step_tokens", 0) + rank.get("steady_tokens", 0)
        tokens = (f"; tokens over the {t['steps']} steps: ours {ours_tokens}, TRL {last['trl'].get('real_tokens')}"
                  if last else "")
        rows.append((bench, "ours / TRL (median of rounds)", "", "", "", "",
                     f"{fmt(t.get('ours_over_trl'), 3)} (ours/plain {fmt(t.get('ours_over_plain'), 3)}, plain/TRL "
                     f"{fmt(t.get('plain_over_trl'), 3)}){tokens}"))
        return rows


def main(argv: list[str] | None = None) -> int:
    """The child process: TRL on a saved job config; prints its result as JSON."""
    spec, steps, threads = sys.argv[1:] if argv is None else argv
    from tinyllm_ray.config import JobConfig

    config = JobConfig.model_validate_json(Path(spec).read_text())
    print(json.dumps(run_trl(config, int(steps), int(threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
