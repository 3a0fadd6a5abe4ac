"""`tinyllm-ray data fetch`: download one dataset folder of the TinyLLM repository over HTTP(S), check every file
(:mod:`tinyllm_ray.dataset_manifest`), and only then move it into place, so a folder that exists is whole.

Two units appear atomically, each by one rename of a temporary folder beside it: the dataset folder with its
problem files (and ``llm/`` when asked for at the same time), and ``llm/`` on its own when it is added to a
folder fetched earlier. A folder already in place is checked, not downloaded again. A fetch killed midway leaves
a hidden ``.<name>.partial-*`` folder, never a half-written dataset folder; the next fetch of that name removes
it (its lock file is free once the process is gone).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .dataset_manifest import (
    DEFAULT_BASE_URL, RATIONALES_FOLDER, FetchError, RemoteFile, count_rows, dataset_spec,
    problem_files, rationale_files, split_of,
)

CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10, 120
CHUNK_BYTES = 1 << 16


@dataclass
class FetchResult:
    folder: Path
    rows: dict[str, int]  # problems per split
    downloaded: list[str] = field(default_factory=list)  # paths inside the folder fetched by this call
    rationale_files: int = 0  # llm/ files now in place (0 when not asked for)

    @property
    def already_complete(self) -> bool:
        return not self.downloaded


def fetch_dataset(name: str, to: Path | str, rationales: bool = False, base_url: str | None = None,
                  progress: bool = True) -> FetchResult:
    """Put ``datasets/<name>/`` of the repository at ``<to>/<name>`` (with ``llm/`` when ``rationales``).

    Raises :class:`FetchError` naming the file on an HTTP error, a failed transfer or a file that does not check;
    then nothing new is left in ``to``."""
    spec = dataset_spec(name)
    target = Path(to) / spec.name
    download = _Downloader(f"{(base_url or DEFAULT_BASE_URL).rstrip('/')}/{spec.name}", progress)
    if target.exists():
        result = FetchResult(target, _check_existing(target, problem_files(spec)))
        if rationales:
            wanted = _rationales_for(result.rows)
            if (target / RATIONALES_FOLDER).exists():
                _check_existing(target, wanted)
            else:
                result.downloaded = _build_atomically(target / RATIONALES_FOLDER,
                                                      lambda tmp: _download_all(download, wanted, tmp))
            result.rationale_files = len(wanted)
        return result

    result = FetchResult(target, {})

    def build(tmp: Path) -> list[str]:
        paths = _download_all(download, problem_files(spec), tmp, result.rows)
        if rationales:
            wanted = _rationales_for(result.rows)
            paths += _download_all(download, wanted, tmp / RATIONALES_FOLDER)
            result.rationale_files = len(wanted)
        return paths

    result.downloaded = _build_atomically(target, build)
    return result


# ---------------------------------------------------------------- glue

def _rationales_for(rows: dict[str, int]) -> list[RemoteFile]:
    return [file for split, count in rows.items() for file in rationale_files(split, count)]


def _check_existing(folder: Path, files: list[RemoteFile]) -> dict[str, int]:
    """Check a folder already in place file by file; refuse (never overwrite) one that does not check."""
    rows = {}
    for file in files:
        path = folder / file.path
        try:
            counted = count_rows(file, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, FetchError) as err:
            reason = "missing" if isinstance(err, FileNotFoundError) else str(err)
            raise FetchError(f"{folder} exists but {file.path} is not a complete copy ({reason}); move the folder "
                             "away (or delete it) and fetch again") from None
        if file.kind == "problems":
            rows[split_of(file)] = counted
    return rows


def _partial_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def _lock_of(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


def remove_dead_partials(target: Path) -> list[Path]:
    """Remove the temporary folders that killed fetches of ``target`` left. A fetch holds an exclusive lock on its
    folder's ``.lock`` file while it runs (the kernel drops it when the process dies), so a folder whose lock can
    be taken is a dead fetch's; a running fetch's, or one without a lock file, stays. Returns what was removed."""
    removed = []
    for folder in target.parent.glob(_partial_prefix(target) + "*"):
        lock_path = _lock_of(folder)
        if not folder.is_dir() or not lock_path.is_file():
            continue
        try:
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
                shutil.rmtree(folder, ignore_errors=True)
                lock_path.unlink(missing_ok=True)
        except OSError:  # held by a running fetch (or a filesystem without locks): leave it
            continue
        removed.append(folder)
    return removed


def _build_atomically(target: Path, build: Callable[[Path], list[str]]) -> list[str]:
    """Run ``build`` in a temporary folder beside ``target`` and rename it to ``target`` when it succeeds; on any
    failure remove the temporary folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(target)
    tmp = target.parent / f"{_partial_prefix(target)}{uuid.uuid4().hex[:12]}"
    lock = open(_lock_of(tmp), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # held while this fetch runs: see remove_dead_partials
    try:
        tmp.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stay on the renamed folder
        paths = build(tmp)
        os.rename(tmp, target)  # fails if another fetch put the folder in place meanwhile: keep theirs
    except FileExistsError:
        raise FetchError(f"{target} appeared while fetching (another fetch?); check it and run again") from None
    except OSError as err:
        if target.exists():
            raise FetchError(f"{target} appeared while fetching (another fetch?); check it and run again") from None
        raise FetchError(f"cannot write {target}: {err}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _lock_of(tmp).unlink(missing_ok=True)
        lock.close()
    return paths


def _download_all(download: "_Downloader", files: list[RemoteFile], into: Path,
                  rows: dict[str, int] | None = None) -> list[str]:
    """Download ``files`` into the folder ``into`` and check each from disk; ``rows`` collects problem counts."""
    into.mkdir(parents=True, exist_ok=True)
    done = []
    for file in files:
        path = into / Path(file.path).name
        download(file.path, path)
        try:
            counted = count_rows(file, path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise FetchError(f"{file.path}: not UTF-8 text ({download.url_of(file.path)}); a wrong download?") \
                from None
        except FetchError as err:
            raise FetchError(f"{err} [{download.url_of(file.path)}]; nothing was written") from None
        if rows is not None and file.kind == "problems":
            rows[split_of(file)] = counted
        done.append(file.path)
    return done


class _Downloader:
    """GET files below one folder URL into local files, streaming, with a progress bar per file."""

    def __init__(self, folder_url: str, progress: bool):
        self.folder_url = folder_url
        self.progress = progress
        self._session = None

    def url_of(self, path: str) -> str:
        return f"{self.folder_url}/{path}"

    def __call__(self, path: str, dest: Path) -> None:
        import requests
        from tqdm import tqdm

        if self._session is None:
            self._session = requests.Session()
        url = self.url_of(path)
        try:
            with self._session.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as response:
                if response.status_code != 200:
                    raise FetchError(f"{path}: HTTP {response.status_code} {response.reason} from {url}; nothing "
                                     "was written (check the dataset name and --base-url)")
                total = int(response.headers.get("Content-Length") or 0) or None
                with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=path, leave=False,
                                                   disable=not self.progress) as bar:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        out.write(chunk)
                        bar.update(response.raw.tell() - bar.n)  # wire bytes, as Content-Length counts (gzip)
        except requests.RequestException as err:  # refused connection, timeout, body shorter than announced
            raise FetchError(f"{path}: download from {url} failed ({type(err).__name__}: {err}); nothing was "
                             "written") from None
