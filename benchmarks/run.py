"""Side-by-side speed and memory benchmarks of tinyllm_ray (issue 5).

    python -m benchmarks.run [--quick] [--only gen,train,eval,scale,startup,driver] [--models tiny,smollm2] [--out DIR]

Sections, one module each (a failing section is recorded with its traceback in the JSON; the others still run):

* ``peak``    fp32 matmul FLOP/s of this machine (torch, all cores): the yardstick for every FLOP/s fraction.
* ``startup`` (:mod:`benchmarks.startup`) ``tinyllm-ray run tiny`` as a subprocess: time to the first rationale
              shard on disk and to the first ``[train] step`` line.
* ``gen``     (:mod:`benchmarks.gen`) teacher generation, per model: the real ``generate`` stage, the same engine on
              a bare in-process ``vllm.LLM``, and a plain transformers batched ``generate`` loop.
* ``train``   (:mod:`benchmarks.train`) student training, per model: the real ``train`` stage (Ray Train, 1
              worker, DeepSpeed ZeRO-0 and ZeRO-2) vs a plain single-process PyTorch loop over the same batches.
* ``train_trl`` (:mod:`benchmarks.train_baselines`) the real ``train`` stage against TRL's ``SFTTrainer`` on the
              same student and sequences, in back-to-back rounds (needs the ``bench`` extra: TRL).
* ``eval``    (:mod:`benchmarks.evaluation`) the student's evaluation, per model: the Ray Data evaluation job with
              vLLM against transformers on the same student and ARC problems, and how many answers agree.
* ``scale``   (:mod:`benchmarks.scale`) generation as the dataset grows and as teachers are added; demo picking
              as the train split grows; training with 1 vs 2 workers.
* ``driver``  (:mod:`benchmarks.driver`) the driver's peak memory validating 200,000 problems and building their
              training table.

Nothing here asserts a timing: the numbers go to a table and a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import driver, evaluation, gen, scale, startup, train, train_baselines
from benchmarks.common import (REPO, RECORDED_ENV, Context, Failed, SectionResult, loadavg, machine_info, markdown,
                               matmul_peak, set_env, versions)
from benchmarks.jobs import MODELS

# in the order they run (startup first: before this process starts its own Ray cluster)
MODULES = {"startup": startup, "gen": gen, "train": train, "train_trl": train_baselines, "eval": evaluation,
           "scale": scale, "driver": driver}
SECTIONS = ("gen", "train", "train_trl", "eval", "scale", "startup", "driver")
TABLE_ORDER = ("gen", "train", "train_trl", "eval", "scale", "driver", "startup")


def run_section(module, ctx: Context, key: str | None = None) -> SectionResult:
    """One section (for one model, ``key``), timed; a failure becomes a :class:`Failed` result with its traceback."""
    started, before = time.time(), loadavg()
    try:
        result = module.run(ctx, key) if module.PER_MODEL else module.run(ctx)
    except Exception:  # noqa: BLE001 - record and go on with the other sections
        result = Failed(module.SECTION, {"error": traceback.format_exc()}, key=key)
        print(f"[bench] {result.label} FAILED:\n{result.data['error']}", flush=True)
    return dataclasses.replace(result, seconds=round(time.time() - started, 1), loadavg_before=before)


def results_json(header: dict[str, Any], results: dict[str, list[SectionResult]]) -> dict[str, Any]:
    """The JSON layout: per-model sections as {model: data}, the others as their data."""
    out = dict(header)
    for name, done in results.items():
        out[name] = ({r.key: r.to_json() for r in done} if MODULES[name].PER_MODEL else done[0].to_json())
    return out


def table(results: dict[str, list[SectionResult]]) -> str:
    return markdown([row for name in TABLE_ORDER for result in results.get(name, []) for row in result.rows()])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version: tiny model only, small sizes")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="folder for the JSON and table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    parser.add_argument("--models", default=None,
                        help=f"comma list of {','.join(MODELS)} for the gen and train sections (default: both; "
                             "tiny with --quick)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else (
        ["tiny"] if args.quick else list(MODELS))
    if not models or set(models) - set(MODELS):
        parser.error(f"--models: choose from {list(MODELS)}, got {args.models!r}")
    args.models = tuple(models)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tinyllm-bench-"))
    set_env(tmp)
    started = time.time()
    header: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick, "sections": args.only,
        "machine": machine_info(), "loadavg_start": loadavg(), "versions": versions(),
        "env": {k: os.environ.get(k) for k in RECORDED_ENV},
    }
    header["matmul_peak"] = matmul_peak()
    peak = header["matmul_peak"]["best_gflops"]
    print(f"[bench] fp32 matmul peak {peak} GFLOP/s, loadavg {header['loadavg_start']}", flush=True)
    ctx = Context(tmp=tmp, quick=args.quick, peak_gflops=peak, models=args.models)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "results-quick" if args.quick else "results"
    partial = out / f"{stem}.partial.json"
    results: dict[str, list[SectionResult]] = {}
    for name, module in MODULES.items():
        if name not in args.only:
            continue
        for key in (ctx.models if module.PER_MODEL else (None,)):
            partial.write_text(json.dumps(results_json(header, results), indent=2, default=str))
            results.setdefault(name, []).append(run_section(module, ctx, key))
    document = results_json(header, results)
    partial.write_text(json.dumps(document, indent=2, default=str))
    document["loadavg_end"] = loadavg()
    document["total_seconds"] = round(time.time() - started, 1)
    rendered = table(results)
    print("\n" + rendered)
    print(f"\nloadavg start {document['loadavg_start']} end {document['loadavg_end']}; "
          f"total {document['total_seconds']} s")
    partial.unlink(missing_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2, default=str))
    (out / f"{stem}.md").write_text(rendered + "\n")
    print(f"[bench] wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001
        pass
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
