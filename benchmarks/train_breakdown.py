"""Where a Ray Train + DeepSpeed step spends its time beyond a plain PyTorch step, free of this VM's drift.

    python -m benchmarks.train_breakdown [--model tiny|smollm2] [--per-variant N] [--out FILE]

Runs the real ``train`` stage (1 worker, ZeRO-0, the product's allocator) with its own worker loop
(``train(config, loop=...)``, built on ``train_worker.setup`` / ``export``) that interleaves, step by step, in ONE
Train worker:

* ``deepspeed_raydata``   the student under DeepSpeed, after pulling a micro-batch from the Ray Data shard (as the
                          shipped loop does every step)
* ``plain_memory``        a second copy of the student with torch AdamW and ``clip_grad_norm_`` (a plain loop)
* ``deepspeed_memory``    DeepSpeed, no pull
* ``plain_raydata``       plain, after a pull
* ``deepspeed_memory_sink`` / ``deepspeed_raydata_sink``  the same, logging the step to the metrics sinks

Every variant of a cycle trains on the same micro-batch (the pulled one is discarded), so their step times differ
only by what the variant adds; the ratio to ``plain_memory`` is taken within each cycle. The sequential benchmark
(``benchmarks.run --only train``) compares separate runs minutes apart, which a drifting VM's speed blurs for a
student with short steps (RESULTS.md). Pulls come every 1-3 steps here, not every step: Ray Data's share of
the shipped loop is at least the ``_raydata`` figures. Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, machine_info, set_env
from benchmarks.jobs import MODELS, gen_for_training

VARIANTS = ("deepspeed_raydata", "plain_memory", "deepspeed_memory", "plain_raydata", "deepspeed_memory_sink",
            "deepspeed_raydata_sink")
PHASES = ("pull", "collate", "forward", "backward", "step")


def make_loop(out_path: str, per_variant: int):
    """The Train worker loop passed as ``train(config, loop=...)``: the product's ``setup`` builds the student under
    DeepSpeed; a plain copy of it trains beside it; ``export`` ends the run as the product's loop does. A closure:
    cloudpickle ships it by value to the worker."""

    def breakdown_loop(spec):
        import time

        import torch

        from tinyllm_ray import train_worker
        from tinyllm_ray.losses import multi_task_loss, per_sequence_loss

        state = train_worker.setup(spec)
        engine, collate, tasks, weights = state.engine, state.collator, spec.tasks, state.task_weights
        torch.manual_seed(spec.seed)
        plain_model = train_worker._load_model(spec.model_path, spec.seq2seq)  # the same initial weights
        plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=spec.learning_rate,
                                            weight_decay=spec.weight_decay)
        plain_scheduler = torch.optim.lr_scheduler.LambdaLR(plain_optimizer, lambda s: 1.0)
        shard, micro_batch = state.shard, spec.micro_batch_size

        def epoch():
            return iter(shard.iter_batches(batch_size=micro_batch, batch_format="numpy", drop_last=True))

        in_memory = [batch for _, batch in zip(range(200), epoch())]
        stream = [epoch()]

        def pull():
            try:
                next(stream[0])
            except StopIteration:
                stream[0] = epoch()
                next(stream[0])

        sinks = train_worker._open_rank0_sinks(spec)
        times = {v: [] for v in VARIANTS}
        phases = {v: {p: [] for p in PHASES} for v in VARIANTS}
        for index in range((per_variant + 1) * len(VARIANTS)):  # the first cycle warms up
            variant = VARIANTS[index % len(VARIANTS)]
            raw = in_memory[(index // len(VARIANTS)) % len(in_memory)]
            marks = [time.perf_counter()]
            if "raydata" in variant:
                pull()
            marks.append(time.perf_counter())
            groups = collate.grouped(raw, spec.length_groups)
            marks.append(time.perf_counter())
            forward = engine if variant.startswith("deepspeed") else plain_model
            losses = [per_sequence_loss(forward(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits,
                                        g["labels"], shift=True) for g in groups]
            loss, per_task = multi_task_loss(torch.cat(losses), torch.cat([g["task_ids"] for g in groups]), weights)
            marks.append(time.perf_counter())
            if variant.startswith("deepspeed"):
                engine.backward(loss)
                marks.append(time.perf_counter())
                engine.step()
            else:
                loss.backward()
                marks.append(time.perf_counter())
                torch.nn.utils.clip_grad_norm_(plain_model.parameters(), 1.0)
                plain_optimizer.step()
                plain_scheduler.step()
                plain_optimizer.zero_grad(set_to_none=True)
            if variant.endswith("sink"):
                sinks.log({"loss": float(loss.detach()), **{f"loss/{tasks[t].name}": float(v)
                                                           for t, v in per_task.items()}}, step=index)
            marks.append(time.perf_counter())
            if index >= len(VARIANTS):
                times[variant].append(marks[-1] - marks[0])
                for name, start, end in zip(PHASES, marks, marks[1:]):
                    phases[variant][name].append(end - start)
        sinks.close()
        Path(out_path).write_text(json.dumps({"times": times, "phases": phases}))
        train_worker.export(state)

    return breakdown_loop


def summarise(raw: dict) -> dict:
    times, base = raw["times"], raw["times"]["plain_memory"]
    out = {}
    for variant in VARIANTS:
        steps = times[variant]
        out[variant] = {
            "median_step_ms": round(1000 * statistics.median(steps), 2),
            "vs_plain_memory_per_cycle": round(statistics.median(a / b for a, b in zip(steps, base)) - 1, 3),
            "phase_median_ms": {p: round(1000 * statistics.median(v), 2) for p, v in raw["phases"][variant].items()},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--per-variant", type=int, default=120, help="steps timed per variant")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "train_breakdown.json")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tinyllm-breakdown-"))
    set_env(tmp)
    from tinyllm_ray.train import train

    mb = 2 if args.model == "smollm2" else 4
    config = gen_for_training(args.model, tmp, False, {"num_workers": 1, "micro_batch_size": mb,
                                                       "max_steps": 100_000, "zero_stage": 0})
    raw_path = tmp / "breakdown.json"
    train(config, force=True, loop=make_loop(str(raw_path), args.per_variant))
    result = {"model": config.student.model, "micro_batch_size": mb, "per_variant": args.per_variant,
              "machine": machine_info(), "variants": summarise(json.loads(raw_path.read_text()))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| variant | median step ms | vs plain_memory (per cycle) | {' | '.join(PHASES)} |")
    print("|---|---|---|" + "---|" * len(PHASES))
    for variant, r in result["variants"].items():
        print(f"| {variant} | {r['median_step_ms']} | {r['vs_plain_memory_per_cycle']:+.1%} | "
              + " | ".join(str(r["phase_median_ms"][p]) for p in PHASES) + " |")
    print(f"[breakdown] JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
