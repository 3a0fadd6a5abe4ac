"""The gen section's baselines: the teacher's prompts on a bare in-process ``vllm.LLM``, through ``ray.data.llm``'s
vLLM processor, and in a plain transformers ``generate`` loop, with the same engine args, sampling and stop string
as the pipeline's teacher actor."""

from __future__ import annotations

import gc
import time
from typing import Any

from benchmarks.stages import steady_window


def render_prompts(config, teacher, tokenizer) -> tuple[list[str], list[str]]:
    """(ids, prompts): the vLLM teacher's own rendering (``teachers.vllm.render_prompt``: demos, chat template...)
    over the frozen train problems."""
    from tinyllm_ray import prompts
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.teachers.vllm import render_prompt

    problems = load_frozen_problems(RunLayout.of(config.output_dir), "train").to_pylist()
    chat = teacher.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))  # as VLLMTeacher
    out = []
    for problem in problems:
        demos = prompts.sample_demos(problems, problem["id"], config.prompts.num_demos, config.prompts.demo_seed,
                                     config.prompts.demo_sampler)
        out.append(render_prompt(tokenizer, teacher, problem, demos, "rationale", chat))
    return [p["id"] for p in problems], out


def run_bare_vllm(config, teacher, model_path: str) -> dict[str, Any]:
    """The same engine args (``teachers.vllm.engine_kwargs``), prompts and SamplingParams as the vLLM teacher, on a
    bare in-process vllm.LLM."""
    import torch
    from vllm import LLM, SamplingParams

    from tinyllm_ray.generation_plan import sampling_dict
    from tinyllm_ray.teachers.vllm import engine_kwargs

    sampling = sampling_dict(teacher, "rationale")
    kwargs = engine_kwargs(teacher, model_path)
    t = time.time()
    llm = LLM(**kwargs)
    init_s = time.time() - t
    params = SamplingParams(**sampling)
    ids, prompts_ = render_prompts(config, teacher, llm.get_tokenizer())
    batch = teacher.resources.shard_size
    out: dict[str, Any] = {"engine_init_seconds": round(init_s, 2), "torch_threads": torch.get_num_threads(),
                           "engine_kwargs": {k: v for k, v in kwargs.items() if k != "model"}}
    texts = []
    # shard-sized calls (what one shard per call gave), calls as large as the pipeline keeps in flight, and
    # everything in one call (the engine's best case on this data)
    variants = {"shard_batches": batch, "engine_batches": batch * teacher.resources.shards_in_flight,
                "one_call": len(prompts_)}
    for label, size in variants.items():
        if label == "engine_batches" and size == batch:
            continue
        t = time.time()
        outputs, batch_seconds = [], []
        for start in range(0, len(prompts_), size):
            tb = time.time()
            outputs += llm.generate(prompts_[start:start + size], params, use_tqdm=False)
            batch_seconds.append(time.time() - tb)
        seconds = time.time() - t
        out[label] = {"batch_size": size, "seconds": seconds, "problems": len(outputs),
                      "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
                      "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
                      "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                      "batch_seconds": [round(x, 3) for x in batch_seconds]}
        if label != "one_call" and len(batch_seconds) >= 2:
            # like the pipeline's "steady": batches 2..n (the first call pays the engine's first-forward warm-up)
            rest = outputs[size:]
            out[f"{label}_steady"] = {
                "batch_size": size, "seconds": sum(batch_seconds[1:]), "problems": len(rest),
                "prompt_tokens": sum(len(o.prompt_token_ids) for o in rest),
                "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in rest),
                "generated_tokens": sum(len(o.outputs[0].token_ids) for o in rest)}
        texts = [o.outputs[0].text.strip() for o in outputs]
    del llm
    gc.collect()
    out["texts"] = dict(zip(ids, texts))
    return out


def run_hf(config, teacher, model_path: str, subset: int, batch_size: int) -> dict[str, Any]:
    """Plain transformers batched greedy generate (left padding), same prompts, max_tokens and stop string."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    load_s = time.time() - t
    ids, prompts_ = render_prompts(config, teacher, tokenizer)
    ids, prompts_ = ids[:subset], prompts_[:subset]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    sampling = teacher.sampling
    prompt_tokens = gen_tokens = 0
    texts = []
    t = time.time()
    with torch.inference_mode():
        for start in range(0, len(prompts_), batch_size):
            enc = tokenizer(prompts_[start:start + batch_size], return_tensors="pt", padding=True)
            kwargs = dict(max_new_tokens=sampling.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            if sampling.stop:
                kwargs.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
            generated = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
            prompt_tokens += int(enc["attention_mask"].sum())
            for row in generated.tolist():
                n = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
                gen_tokens += n
                text = tokenizer.decode(row[:n], skip_special_tokens=True)
                for stop in sampling.stop:  # vLLM leaves the stop string out of its text
                    text = text.split(stop, 1)[0]
                texts.append(text)
    seconds = time.time() - t
    del model
    gc.collect()
    return {"model_load_seconds": round(load_s, 2), "torch_threads": torch.get_num_threads(), "subset": len(prompts_),
            "batch_size": batch_size, "seconds": seconds, "problems": len(prompts_), "prompt_tokens": prompt_tokens,
            "generated_tokens": gen_tokens, "texts": dict(zip(ids, texts))}




def run_ray_data_llm(config, teacher, model_path: str) -> dict[str, Any]:
    """What a Ray user would pick instead of the pipeline: ``ray.data.llm``'s vLLM processor with its defaults, on
    the same prompts, engine args and SamplingParams (the pipeline's rendering is the input; its chat-template
    stage is off, the prompts already hold the template). The processor's own actor is started by the call, as the
    pipeline's are: time to the first result counts it; steady state is after the first result."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    from tinyllm_ray.generation_plan import sampling_dict
    from tinyllm_ray.teachers.vllm import engine_kwargs

    sampling = sampling_dict(teacher, "rationale")
    kwargs = {k: v for k, v in engine_kwargs(teacher, model_path).items() if k != "model"}
    ids, prompts_ = render_prompts(config, teacher, AutoTokenizer.from_pretrained(model_path))
    # what the pipeline's actor holds (the processor's default bundle is one GPU and one CPU)
    bundle = {"CPU": teacher.resources.num_cpus_per_actor}
    if teacher.resources.num_gpus_per_actor:
        bundle["GPU"] = teacher.resources.num_gpus_per_actor
    processor = build_processor(
        vLLMEngineProcessorConfig(model_source=model_path, engine_kwargs=kwargs, concurrency=1,
                                  batch_size=teacher.resources.shard_size, chat_template_stage=False,
                                  placement_group_config={"bundles": [bundle]}),
        preprocess=lambda row: {"prompt": row["prompt"], "sampling_params": sampling},
        postprocess=lambda row: {"id": row["id"], "text": row["generated_text"],
                                 "prompt_tokens": row["num_input_tokens"],
                                 "generated_tokens": row["num_generated_tokens"]})
    t = time.time()
    first_s, rows, arrivals = None, [], []
    # prefetch_batches=0: by default the iterator hands over a block only once the next one exists (one behind)
    for batch in processor(ray.data.from_items([{"id": i, "prompt": p} for i, p in zip(ids, prompts_)])).iter_batches(
            batch_size=None, batch_format="pandas", prefetch_batches=0):
        first_s = first_s if first_s is not None else time.time() - t
        records = batch.to_dict("records")
        arrivals.append((time.time(), len(records), sum(int(r["prompt_tokens"]) for r in records),
                         sum(int(r["generated_tokens"]) for r in records), 0))
        rows += records
    seconds = time.time() - t
    out = {"first_result_seconds": round(first_s or seconds, 2), "seconds": seconds, "problems": len(rows),
           "prompt_tokens": sum(int(r["prompt_tokens"]) for r in rows),
           "generated_tokens": sum(int(r["generated_tokens"]) for r in rows),
           "batch_size": teacher.resources.shard_size, "texts": {r["id"]: str(r["text"]).strip() for r in rows}}
    steady = steady_window(arrivals)  # the pipeline's rule (benchmarks.stages), on the batches as they came
    if steady:
        out["steady"] = steady
    return out
