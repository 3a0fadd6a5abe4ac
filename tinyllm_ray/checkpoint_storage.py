"""Where a training rank writes a checkpoint, and how it reports it to Ray Train. Glue only (runs on the workers).

When the run's storage is a file system the workers mount (a local path, NFS, a shared volume), each rank writes
straight into the checkpoint's folder in that storage and reports it as it is (``CheckpointUploadMode.NO_UPLOAD``):
the engine state is written once, with no staging copy in the worker's /tmp that Ray then copies again. On any other
file system (an object store) the rank writes into a temporary folder, which Ray uploads and the rank deletes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def checkpoint_folder(name: str) -> Iterator[tuple[Path, Any]]:
    """(the folder to write checkpoint ``name`` into, the upload mode to report it with)."""
    import pyarrow.fs
    import ray.train
    from ray.train import CheckpointUploadMode

    storage = ray.train.get_context().get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        folder = Path(storage.build_checkpoint_path_from_name(name))
        folder.mkdir(parents=True, exist_ok=True)  # every rank writes its part into the same folder, as DeepSpeed does
        yield folder, CheckpointUploadMode.NO_UPLOAD
    else:
        with tempfile.TemporaryDirectory(prefix="tinyllm-ckpt-") as staging:
            yield Path(staging), CheckpointUploadMode.SYNC


def report_checkpoint(metrics: Mapping[str, Any], name: str, folder: Path | None = None, mode: Any = None) -> None:
    """Report ``folder`` (from :func:`checkpoint_folder`) as checkpoint ``name``; ``folder`` None: this rank adds
    nothing to it (the report is still a barrier every rank must reach)."""
    import ray.train
    from ray.train import CheckpointUploadMode

    if folder is None:
        ray.train.report(dict(metrics), checkpoint=None, checkpoint_dir_name=name)
        return
    storage = ray.train.get_context().get_storage()
    filesystem = storage.storage_filesystem if mode == CheckpointUploadMode.NO_UPLOAD else None
    ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint(str(folder), filesystem=filesystem),
                     checkpoint_dir_name=name, checkpoint_upload_mode=mode)


def take_export(checkpoint, destination: Path, keep: bool) -> None:
    """Put the run's final export at ``destination`` (driver side): moved out of the run's storage when that is
    local and the checkpoints are not kept (a rename, no copy), else copied (the stored run stays whole)."""
    import shutil

    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        (shutil.copytree if keep else shutil.move)(checkpoint.path, destination)
    else:
        checkpoint.to_directory(str(destination))  # downloaded once
