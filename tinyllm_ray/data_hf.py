"""``data.format: hf``: one split of a Hugging Face dataset (``datasets.load_dataset`` on a folder, data files or a
hub id, or ``load_from_disk`` on a ``save_to_disk`` folder), as the rows every reader yields. The ``datasets``
import stays lazy: only this format pays for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DataConfig
from .data_fields import DataError

HF_BATCH = 8192  # rows turned into Python records at once

def describe(config: DataConfig) -> str:
    """How errors name the source: the path plus the configuration, e.g. ``allenai/ai2_arc (ARC-Easy)``."""
    return config.path + (f" ({config.hf.name})" if config.hf.name else "")


def is_saved_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder: a DatasetDict writes dataset_dict.json, one Dataset writes state.json."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_splits(config: DataConfig) -> dict[str, Any]:
    """Every split of the source by name (``datasets.Dataset`` objects, not yet read row by row)."""
    try:
        import datasets
    except ImportError as err:  # a dependency of the package, so only a broken install lands here
        raise DataError(f"data.format=hf needs the `datasets` library ({err}); pip install datasets") from None
    path, hf = config.path, config.hf
    try:
        if Path(path).is_dir() and is_saved_dataset(Path(path)):
            loaded = datasets.load_from_disk(path)
        else:
            loaded = datasets.load_dataset(path, hf.name, data_files=hf.data_files, revision=hf.revision,
                                           cache_dir=hf.cache_dir)
    except Exception as err:  # noqa: BLE001 - datasets raises many types (OSError, ValueError, its own): "cannot load"
        raise DataError(f"{describe(config)}: datasets could not load it ({type(err).__name__}: {err}); data.path "
                          "must be a local folder, a save_to_disk folder or a hub id this machine can reach "
                          "(data.hf.name picks a configuration, data.hf.data_files the files)") from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    if loaded.split is None:  # a lone Dataset saved without a split name could be train or test
        raise DataError(f"{path}: this saved Dataset has no split name; save a DatasetDict "
                          "({'train': ..., 'validation': ...}) so each split is named")
    return {str(loaded.split): loaded}


def split_of(config: DataConfig, split: str) -> Any:
    splits = load_splits(config)
    if split not in splits:
        raise DataError(f"{describe(config)} has splits {sorted(splits)}, not {split!r}; set data.train_split / "
                          "data.eval_split to one of them (Hugging Face datasets usually call it 'validation')")
    return splits[split]


def hf_rows(dataset: Any, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """The split's records as ``("row N", record)``, nested features as dicts, read batch by batch up to ``limit``."""
    rows = dataset if limit is None else dataset.select(range(min(limit, dataset.num_rows)))
    number = 0
    for batch in rows.with_format("arrow").iter(batch_size=HF_BATCH):
        for record in batch.to_pylist():
            number += 1
            yield f"row {number}", record
