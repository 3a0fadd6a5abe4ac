"""Section ``gen``: teacher generation, per model. (a) the real ``generate`` stage (Ray Data + vLLM actor), (b) the
same engine args / prompts / SamplingParams on a bare in-process ``vllm.LLM``, (b') through ``ray.data.llm``'s vLLM
processor (what a Ray user would pick instead), (c) a plain transformers batched ``generate`` loop; in a full run
also (a) again after (b) and (c), with one engine thread fewer than cores, and with ``prompts.demo_sampler:
fixed``. See README.md for what each variant holds fixed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Context, Row, SectionResult, fmt, gen_row, model_params, rates
from benchmarks.gen_baselines import run_bare_vllm, run_hf, run_ray_data_llm
from benchmarks.jobs import ensure_ray, gen_data, job_config, teacher_spec
from benchmarks.stages import run_pipeline

SECTION = "gen"
PER_MODEL = True


def run(ctx: Context, model_key: str) -> "GenResult":
    from tinyllm_ray.models import resolve_model

    tmp, quick, peak = ctx.tmp, ctx.quick, ctx.peak_gflops
    data, problems = gen_data(tmp, quick, model_key)
    batch = 8 if quick else 16
    config = job_config(tmp / f"gen_{model_key}", model_key, data,
                        # one teacher: its actor gets every core (Ray gives it num_cpus threads), as the bare
                        # engine and the transformers loop do
                        [teacher_spec(model_key, "greedy", batch, cpus=os.cpu_count() or 1)])
    teacher = config.teachers[0]
    model_path = resolve_model(teacher.model)
    params = model_params(model_path)
    out: dict[str, Any] = {"model": teacher.model, "params": params, "problems": problems, "shard_batch": batch,
                           "shards_in_flight": teacher.resources.shards_in_flight,
                           "max_tokens": teacher.sampling.max_tokens, "ray_init_seconds": ensure_ray()}

    def pipeline(cfg=config) -> dict[str, Any]:
        pipe = run_pipeline(cfg)
        t = pipe["teachers"][teacher.name]
        result = {"stage": rates(pipe["stage_seconds"], t["rows"], t["prompt_tokens"], t["generated_tokens"],
                                 params, peak, t["cached_prompt_tokens"]),
                  "manifest_seconds": t["manifest_seconds"], "startup_estimate_s": t.get("startup_estimate_s"),
                  "first_shard_after_s": t["first_shard_after_s"], "shards": t["shards"],
                  "memory": pipe["memory"], "teacher_actor": pipe["teacher_actor"]}
        if "steady" in t:
            s = t["steady"]
            result["steady"] = {**rates(s["seconds"], s["problems"], s["prompt_tokens"], s["generated_tokens"],
                                        params, peak, s["cached_prompt_tokens"]), "first_shard": s["first_result"]}
        return result

    def texts_written(cfg) -> dict[str, str]:
        """id -> rationale of what the pipeline wrote for ``cfg``, to compare the other variants' texts with."""
        from tinyllm_ray.layout import RunLayout
        from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_table

        table = read_table(RunLayout.of(cfg.output_dir).teacher_dir(teacher.name), RATIONALE_SCHEMA)
        return dict(zip(table.column("id").to_pylist(), table.column("rationale").to_pylist()))

    def transformers(cfg, texts: dict[str, str]) -> dict[str, Any]:
        print(f"[bench] gen {model_key}: transformers generate on {ctx.hf_subset} problems", flush=True)
        hf = run_hf(cfg, teacher, model_path, ctx.hf_subset, batch)
        same = sum(texts.get(i) == text.strip() for i, text in hf["texts"].items())
        return {"model_load_seconds": hf["model_load_seconds"], "torch_threads": hf["torch_threads"],
                "subset": hf["subset"], "batch_size": hf["batch_size"],
                **rates(hf["seconds"], hf["problems"], hf["prompt_tokens"], hf["generated_tokens"], params, peak),
                "identical_to_pipeline": f"{same}/{len(hf['texts'])}"}

    print(f"[bench] gen {model_key}: pipeline", flush=True)
    out["pipeline"] = pipeline()
    print(f"[bench] gen {model_key}: bare vLLM", flush=True)
    bare = run_bare_vllm(config, teacher, model_path)
    out["bare_vllm"] = {"engine_init_seconds": bare["engine_init_seconds"], "torch_threads": bare["torch_threads"],
                        "engine_kwargs": bare["engine_kwargs"]}
    for label in ("shard_batches", "shard_batches_steady", "engine_batches", "engine_batches_steady", "one_call"):
        if label not in bare:
            continue
        b = bare[label]
        out["bare_vllm"][label] = {"batch_size": b["batch_size"], **rates(
            b["seconds"], b["problems"], b["prompt_tokens"], b["generated_tokens"], params, peak,
            b["cached_prompt_tokens"])}
    pipeline_text = texts_written(config)
    same = sum(pipeline_text.get(i) == text for i, text in bare["texts"].items())
    out["bare_vllm"]["identical_to_pipeline"] = f"{same}/{len(bare['texts'])}"
    print(f"[bench] gen {model_key}: ray.data.llm", flush=True)
    rdl = run_ray_data_llm(config, teacher, model_path)
    same = sum(pipeline_text.get(i) == text for i, text in rdl["texts"].items())
    out["ray_data_llm"] = {"first_result_seconds": rdl["first_result_seconds"], "batch_size": rdl["batch_size"],
                           **rates(rdl["seconds"], rdl["problems"], rdl["prompt_tokens"], rdl["generated_tokens"],
                                   params, peak),
                           "identical_to_pipeline": f"{same}/{len(rdl['texts'])}"}
    if "steady" in rdl:
        s = rdl["steady"]
        out["ray_data_llm"]["steady"] = {**rates(s["seconds"], s["problems"], s["prompt_tokens"],
                                                 s["generated_tokens"], params, peak),
                                         "first_result": s["first_result"]}
    out["transformers"] = transformers(config, pipeline_text)
    if not quick:
        # the pipeline again after the bare engine and transformers: the comparison is bracketed against this VM's
        # drift (its speed changes between runs), as the training section does
        print(f"[bench] gen {model_key}: pipeline again (bracketing the bare engine)", flush=True)
        out["pipeline_after"] = pipeline()
        if (os.cpu_count() or 1) > 1:
            # one engine thread fewer than cores: the actor's own work (rendering, tokenising, Parquet writes, Ray)
            # and the driver's then have a core the engine's OpenMP team does not wait on
            print(f"[bench] gen {model_key}: pipeline, one core left to the actor's own work", flush=True)
            threads = (os.cpu_count() or 1) - 1
            fewer = job_config(tmp / f"gen_{model_key}_threads", model_key, data,
                               [teacher_spec(model_key, "greedy", batch, cpus=threads)])
            out["pipeline_core_free"] = {"engine_threads": threads, **pipeline(fewer)}
        # prompts.demo_sampler "fixed": every prompt starts with the same demonstrations, which vLLM's prefix cache
        # computes once; transformers runs the same prompts (its own folder: the rationales' fingerprint differs)
        fixed = job_config(tmp / f"gen_{model_key}_fixed", model_key, data, [teacher.model_dump(mode="json")],
                           prompts={"demo_sampler": "fixed"})
        print(f"[bench] gen {model_key}: pipeline, fixed demos", flush=True)
        out["fixed_demos"] = {"pipeline": pipeline(fixed)}
        out["fixed_demos"]["transformers"] = transformers(fixed, texts_written(fixed))
    return GenResult(SECTION, out, key=model_key)


def _ratio(a: float, b: float) -> str:
    return f"{a / max(b, 1e-9):.2f}"


@dataclass(frozen=True)
class GenResult(SectionResult):
    def table_rows(self) -> list[Row]:
        g, bench = self.data, self.label
        rows = []
        p = g["pipeline"]
        rows.append(gen_row(bench, "pipeline stage", p["stage"], f"{g['problems']} problems, start-up est. "
                    f"{fmt(p.get('startup_estimate_s'), 1)} s, peak worker RSS "
                    f"{p['memory']['ray_worker_max_rss_mb']} MB"))
        if "steady" in p:
            rows.append(gen_row(bench, "pipeline steady", p["steady"],
                                f"shards {p['steady'].get('first_shard', 2)}..{p['shards']} (past a third), "
                                f"{g.get('shards_in_flight', 1)} shards of {g['shard_batch']} in flight"))
        after = g.get("pipeline_after", {})
        if "steady" in after:
            rows.append(gen_row(bench, "pipeline steady, run again last", after["steady"],
                                "after bare and transformers"))
        free = g.get("pipeline_core_free", {})
        if "steady" in free:
            rows.append(gen_row(
                bench, f"pipeline steady, {free['engine_threads']} engine thread(s)", free["steady"],
                f"num_cpus_per_actor {free['engine_threads']}: one core left to the rest; "
                + (f"{_ratio(free['steady']['gen_tokens_per_s'], after['steady']['gen_tokens_per_s'])}x "
                   "the run before" if "steady" in after else "")))
        b = g["bare_vllm"]
        rows.append(gen_row(bench, "bare vLLM (shard batches)", b["shard_batches"],
                            f"init {b['engine_init_seconds']} s, {b['torch_threads']} torch thr, "
                            f"same text {b['identical_to_pipeline']}"))
        for label in ("shard_batches", "engine_batches"):
            if label == "engine_batches" and label in b:
                rows.append(gen_row(bench, f"bare vLLM (batches of {b[label]['batch_size']})", b[label], ""))
            if f"{label}_steady" in b:
                rows.append(gen_row(bench, f"bare vLLM (batches of {b[label]['batch_size']}, 2..n)",
                                    b[f"{label}_steady"], ""))
        rows.append(gen_row(bench, "bare vLLM (one call)", b["one_call"], "all prompts at once"))
        r = g.get("ray_data_llm")
        if r:
            rows.append(gen_row(bench, "ray.data.llm vLLM processor", r,
                                f"first result {r['first_result_seconds']} s, batch {r['batch_size']}, "
                                f"same text {r['identical_to_pipeline']}"))
            if "steady" in r:
                rows.append(gen_row(bench, "ray.data.llm steady", r["steady"],
                                    f"batches {r['steady']['first_result']}.. (the pipeline's window rule)"))
        h = g["transformers"]
        rows.append(gen_row(bench, "transformers generate", h, f"subset {h['subset']}, batch {h['batch_size']}, "
                            f"same text {h['identical_to_pipeline']}"))
        steady = p.get("steady", p["stage"])["gen_tokens_per_s"]
        if "steady" in after:  # the mean of the runs before and after the bare engine
            steady = (steady + after["steady"]["gen_tokens_per_s"]) / 2
        # the bare engine at the batch the pipeline keeps in flight (batch x shards_in_flight)
        reference = "engine_batches" if "engine_batches" in b else "shard_batches"
        bare_steady = b.get(f"{reference}_steady", b[reference])["gen_tokens_per_s"]
        stage = p["stage"]["gen_tokens_per_s"]
        rows.append((bench, "ratios", "", "", "", "",
                     f"pipeline stage / transformers = {_ratio(stage, h['gen_tokens_per_s'])}x; "
                     f"pipeline steady (mean of runs) / transformers = {_ratio(steady, h['gen_tokens_per_s'])}x; "
                     f"pipeline steady / bare steady (batches of {b[reference]['batch_size']}) = "
                     f"{_ratio(steady, bare_steady)}; "
                     f"stage / bare(shard) = {_ratio(stage, b['shard_batches']['gen_tokens_per_s'])}"))
        if r:
            both_steady = "steady" in p and "steady" in r
            rows.append((bench, "ratios, ray.data.llm", "", "", "", "",
                         f"pipeline stage / ray.data.llm = {_ratio(stage, r['gen_tokens_per_s'])}x; "
                         + (f"pipeline steady / ray.data.llm steady = "
                            f"{_ratio(steady, r['steady']['gen_tokens_per_s'])}x; " if both_steady else "")
                         + f"first result: pipeline {fmt(p.get('first_shard_after_s'), 1)} s, ray.data.llm "
                         f"{r['first_result_seconds']} s"))
        fixed = g.get("fixed_demos")
        if fixed:
            fp, fh = fixed["pipeline"], fixed["transformers"]
            fixed_steady = fp.get("steady", fp["stage"])
            rows.append(gen_row(bench, "pipeline steady, fixed demos", fixed_steady,
                                "prompts.demo_sampler fixed: vLLM's prefix cache holds the shared demonstrations"))
            rows.append(gen_row(bench, "transformers, fixed demos", fh, f"subset {fh['subset']}, "
                                f"same text {fh['identical_to_pipeline']}"))
            rows.append((bench, "ratios, fixed demos", "", "", "", "",
                         f"pipeline steady / transformers = "
                         f"{_ratio(fixed_steady['gen_tokens_per_s'], fh['gen_tokens_per_s'])}x; "
                         f"fixed / per-problem demos, pipeline steady = "
                         f"{_ratio(fixed_steady['gen_tokens_per_s'], steady)}x"))
        return rows
