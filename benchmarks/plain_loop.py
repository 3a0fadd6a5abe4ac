"""The plain single-process PyTorch loop the train section compares Ray Train + DeepSpeed with, on exactly the
micro-batches ``train()`` feeds its one worker, run in a fresh process as a Train worker is one:

    python -m benchmarks.plain_loop JOB_JSON STEPS THREADS     # prints its result as one JSON line
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import preempted as thread_preemptions, run_job_process


def training_batches(config) -> tuple[list[dict[str, list]], str, list]:
    """Rank 0's micro-batches for a 1-worker run, in the order train() feeds them (seeded permutation)."""
    import numpy as np

    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.models import resolve_model
    from tinyllm_ray.train import load_rationales
    from tinyllm_ray.training_data import build_training_table, take_fraction, tasks_for

    layout = RunLayout.of(config.output_dir)
    teachers = config.distilled_teachers()
    # exactly train()'s table: the same data fraction and rationale filter
    problems = take_fraction(load_frozen_problems(layout, "train"), config.training.data_fraction,
                             config.training.seed)
    table, _ = build_training_table(problems, {t.name: load_rationales(layout, t.name) for t in teachers},
                                    config.training.rationale_filter)
    table = table.take(np.random.default_rng(config.training.seed).permutation(table.num_rows))
    rows = table.to_pydict()
    mb = config.training.micro_batch_size
    batches = [{k: v[i:i + mb] for k, v in rows.items()} for i in range(0, table.num_rows - mb + 1, mb)]
    tasks = tasks_for(config.prompts.task_prefix, config.training.answer_weight,
                      [(t.name, t.rationale_prefix, config.alpha_for(t.name)) for t in teachers])
    return batches, resolve_model(config.student.model), tasks


def token_batches(config, batches: list[dict[str, list]], model_path: str):
    """The text micro-batches as the stream's token rows (tokenised as the training set's join tasks tokenise), and
    the collator the Train worker pads them with."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from tinyllm_ray.schemas import training_schema
    from tinyllm_ray.train_plan import tokenisation
    from tinyllm_ray.training_tokens import Collator, tokenise_table, with_pad_token

    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(model_path))
    tokens = tokenisation(config, model_path)
    schema = training_schema([t.name for t in config.distilled_teachers()])
    out = [tokenise_table(pa.Table.from_pydict(raw, schema=schema), tokenizer, tokens).to_pydict() for raw in batches]
    return out, Collator(tokens.tasks, False, tokenizer.pad_token_id)


def padding_waste(config) -> dict[str, Any]:
    batches, model_path, _ = training_batches(config)
    batches, collate = token_batches(config, batches, model_path)
    out: dict[str, Any] = {"micro_batch_size": config.training.micro_batch_size, "batches": len(batches)}
    # one padded batch per micro-batch (length_groups 1) against what training does (training.length_groups)
    for groups in sorted({1, config.training.length_groups}):
        real = total = seqs = 0
        for raw in batches:
            for group in collate.grouped(raw, groups):
                mask = group["attention_mask"]
                real += int(mask.sum())
                total += mask.numel()
                seqs += mask.shape[0]
        out[f"length_groups_{groups}"] = {"sequences": seqs, "real_tokens": real, "padded_tokens": total,
                                          "pad_fraction": round(1 - real / max(total, 1), 3)}
    out["pad_fraction"] = out[f"length_groups_{config.training.length_groups}"]["pad_fraction"]
    return out


def run_plain_loop(config, steps: int, threads: int) -> dict[str, Any]:
    """Single-process PyTorch: same model, the Train worker's token batches and collator, torch AdamW + warm-up
    schedule, clipping at 1.0 (DeepSpeed's gradient_clipping), same loss functions and number of steps."""
    import torch
    from transformers import AutoModelForCausalLM

    from tinyllm_ray.losses import multi_task_loss, per_sequence_loss

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        batches, model_path, tasks = training_batches(config)
        training = config.training
        batches, collate = token_batches(config, batches, model_path)
        torch.manual_seed(training.seed)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate,
                                      weight_decay=training.weight_decay)
        warmup = training.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        weights = torch.tensor([t.weight for t in tasks])
        startup = time.time() - t0
        times, tokens, preempted = [], [], []
        for raw in (batches * (steps // max(len(batches), 1) + 1))[:steps]:
            preempted.append(thread_preemptions())  # as the Train worker's timed loop counts them
            t = time.time()
            groups = collate.grouped(raw, training.length_groups)  # the same length-grouped batches as train()
            losses = [per_sequence_loss(model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits,
                                        g["labels"], shift=True) for g in groups]
            loss, _ = multi_task_loss(torch.cat(losses), torch.cat([g["task_ids"] for g in groups]), weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.time() - t)
            tokens.append(sum(int(g["attention_mask"].sum()) for g in groups))
        del model, optimizer
        gc.collect()
    finally:
        torch.set_num_threads(before)
    out = {"torch_threads": threads, "startup_s": round(startup, 2), "steps": len(times),
           "first_step_s": round(times[0], 3), "step_seconds": [round(x, 3) for x in times[1:]]}
    if len(times) >= 3:
        out["steady_tokens_per_s"] = round(sum(tokens[1:]) / sum(times[1:]), 1)
        out["steady_step_s"] = round(sum(times[1:]) / (len(times) - 1), 3)
        out["median_step_s"] = round(statistics.median(times[1:]), 3)
        out["preemptions_per_step"] = round((preempted[-1] - preempted[1]) / (len(times) - 2), 2)
    return out


def run_plain_loop_process(config, steps: int, threads: int, allocator: str) -> dict[str, Any]:
    """:func:`run_plain_loop` in a fresh process (as a Train worker is one) on ``allocator``: ``system`` (glibc, what a
    plain script gets) or ``jemalloc`` (preloaded exactly as the product preloads it into CPU Train workers)."""
    from tinyllm_ray.runtime import allocator_env

    return run_job_process("benchmarks.plain_loop", config, steps, threads, allocator_env(allocator, on_gpu=False),
                           "plain loop")


def main(argv: list[str] | None = None) -> int:
    """The child process: run the plain loop on a saved job config and print its result (and allocator) as JSON."""
    spec, steps, threads = sys.argv[1:] if argv is None else argv
    from tinyllm_ray.config import JobConfig
    from tinyllm_ray.runtime import allocator_in_use

    config = JobConfig.model_validate_json(Path(spec).read_text())
    result = run_plain_loop(config, int(steps), int(threads))
    result["jemalloc_loaded"] = allocator_in_use() == "jemalloc"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
