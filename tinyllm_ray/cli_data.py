"""`tinyllm-ray data ...`: obtain and look at datasets. Registered in cli.py as the `data` command group."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Obtain and look at datasets.")


@data_app.command()
def fetch(name: str = typer.Argument(..., help="Dataset folder of the TinyLLM repository: obqa, arc, pubmedqa, "
                                     "piqa, riddle, bioasq."),
          to: Path = typer.Option(Path("data/tinyllm"), "--to", help="Parent folder; the dataset lands in TO/NAME "
                                  "(the jobs read data/tinyllm/NAME)."),
          rationales: bool = typer.Option(False, "--rationales", help="Also the paper's teacher rationales (llm/), "
                                          "what `kind: imported` teachers with source.format tinyllm read."),
          base_url: Optional[str] = typer.Option(None, "--base-url", envvar="TINYLLM_RAY_DATA_URL",
                                                 help="Folder URL holding the datasets/ folders [default: the "
                                                 "repository's main branch on raw.githubusercontent.com]."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")):
    """Download one dataset folder of the TinyLLM repository (YikunHan42/TinyLLM, datasets/NAME), check every file
    (it parses, row counts) and move it into place whole; a folder already in place is checked, not fetched."""
    from tinyllm_ray.cli import _fail
    from tinyllm_ray.dataset_manifest import dataset_spec
    from tinyllm_ray.errors import TinyLLMError
    from tinyllm_ray.fetch import fetch_dataset

    try:
        result = fetch_dataset(name, to, rationales=rationales, base_url=base_url, progress=not quiet)
    except TinyLLMError as err:
        _fail(err)
    rows = ", ".join(f"{split} {count}" for split, count in result.rows.items())
    extra = f" + {result.rationale_files} rationale files in llm/" if rationales else ""
    state = "already complete, nothing downloaded" if result.already_complete else \
        f"downloaded {len(result.downloaded)} files"
    typer.echo(f"ok: {result.folder} ({dataset_spec(name).describe()}): problems {rows}{extra}; {state}")


@data_app.command()
def show(config: str = typer.Argument("demo", help="Job config: a YAML file or a shipped preset name."),
         overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a config key, e.g. --set "
                                                      "data.fields.question=question.stem (repeatable)."),
         count: int = typer.Option(3, "-n", "--count", min=0, help="How many problems to print."),
         split: Optional[str] = typer.Option(None, "--split", help="Print this split's problems "
                                             "(default: data.train_split).")):
    """Print the first problems as the job reads them (question, options, answer) and the problems per split.

    Reads and checks every row of the train and eval splits, no Ray, no models: a mapping that works here works.

    A bad row stops with its file, row and the keys it has; fix data.fields with --set and rerun."""
    from tinyllm_ray.cli import _fail, _load
    from tinyllm_ray.data import load_problems
    from tinyllm_ray.data_preview import render_preview
    from tinyllm_ray.errors import TinyLLMError

    try:
        job = _load(config, overrides, None)
        splits = dict.fromkeys([split or job.data.train_split, job.data.train_split, job.data.eval_split])
        tables = {name: load_problems(job.data, name) for name in splits}
        sizes = None
        if job.data.format == "hf":
            from tinyllm_ray.data_hf import load_splits

            sizes = {name: dataset.num_rows for name, dataset in load_splits(job.data).items()}
    except TinyLLMError as err:
        _fail(err)
    typer.echo(render_preview(job.data, tables, sizes, count))
