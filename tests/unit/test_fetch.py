"""`tinyllm-ray data fetch` against a real HTTP server on 127.0.0.1 serving a folder in the TinyLLM repository's
layout: what lands on disk, that a rerun downloads nothing, and that a bad file leaves nothing behind and is named.
No test touches the internet."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.config import DataConfig, ImportSource
from tinyllm_ray.data import load_problems, load_tinyllm_rationales
from tinyllm_ray.dataset_manifest import (
    DATASETS, DEFAULT_BASE_URL, FetchError, RemoteFile, count_rows, dataset_spec, problem_files, rationale_files,
)
from tinyllm_ray.fetch import fetch_dataset
from tinyllm_ray.rationale_import import read_imported

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyllm"
RIDDLE_ROWS = {"train": 501, "valid": 3, "test": 2}  # 501: the train rationales span two llm/ files


def write_riddle(root: Path, rows: dict[str, int] = RIDDLE_ROWS) -> Path:
    """A 5-option dataset folder ``root/riddle`` in the repository's layout, with its llm/ files."""
    folder = root / "riddle"
    (folder / "llm").mkdir(parents=True)
    for split, count in rows.items():
        records = [{"id": f"{split}-{i}", "question": f"What am I, riddle {i}?",
                    "choices": ["a shadow", "a river", "an echo", "a candle", "a map"], "answer": "an echo"}
                   for i in range(count)]
        (folder / f"riddle_{split}.json").write_text(json.dumps(records))
        for k in range(0, count, 500):
            texts = [f"Echoes repeat. Thus, the answer is (c) an echo llama rationale: It repeats you {i}."
                     for i in range(k, min(count, k + 500))]
            (folder / "llm" / f"{split}_CoT_{k // 500}.json").write_text(json.dumps(texts))
    return folder


class Server:
    """http.server in a thread over ``root``; records every request path. ``short_body`` paths announce their full
    length but send half of it and close: a transfer cut off mid-file."""

    def __init__(self, root: Path):
        self.root, self.requests, self.short_body = root, [], set()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                if self.path in server.short_body:
                    body = (server.root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "remote"
    write_riddle(root)
    server = Server(root)
    yield server
    server.close()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------- the manifest (pure)

def test_rationale_files_follow_the_500_row_chunks_of_the_shared_copy():
    arc = [f.path for split, n in dataset_spec("arc").rows.items() for f in rationale_files(split, n)]
    expected = ["llm/train_CoT_0.json", "llm/train_CoT_1.json", "llm/train_CoT_2.json", "llm/valid_CoT_0.json",
                "llm/test_CoT_0.json", "llm/test_CoT_1.json", "llm/test_CoT_2.json"]
    assert arc == expected
    assert [f.rows for f in rationale_files("train", 1117)] == [500, 500, 117]
    if (SHARED / "arc").is_dir():  # the names the repository really has
        assert sorted(expected) == sorted(f"llm/{p.name}" for p in (SHARED / "arc" / "llm").iterdir())


@pytest.mark.parametrize("name", ["obqa", "arc", "pubmedqa"])
def test_pinned_row_counts_match_the_shared_copy(name):
    if not (SHARED / name).is_dir():
        pytest.skip("shared/data/tinyllm is not beside the checkout")
    spec = dataset_spec(name)
    for file in problem_files(spec):
        assert count_rows(file, (SHARED / name / file.path).read_text()) == file.rows
    for split, rows in spec.rows.items():
        for file in rationale_files(split, rows):
            assert count_rows(file, (SHARED / name / file.path).read_text()) == file.rows


def test_count_rows_names_the_file_and_the_problem():
    problems = RemoteFile("riddle_valid.json", "problems", None)
    assert count_rows(problems, '[{"id": 1}, {"id": 2}]') == 2
    assert count_rows(problems, '{"id": 1}\n{"id": 2}\n{"id": 3}\n') == 3  # JSON Lines, as obqa ships
    for text, says in (('[{"id": 1}, {"id"', "not valid JSON"), ("<html>Not Found</html>", "not valid JSON"),
                       ("[]", "no rows")):
        with pytest.raises(FetchError, match=says) as err:
            count_rows(problems, text)
        assert "riddle_valid.json" in str(err.value)
    with pytest.raises(FetchError, match=r"llm/valid_CoT_0.json: 1 rows, expected 3"):
        count_rows(RemoteFile("llm/valid_CoT_0.json", "rationales", 3), '["x"]')
    with pytest.raises(FetchError, match="array of rationale strings"):
        count_rows(RemoteFile("llm/valid_CoT_0.json", "rationales", 1), '[{"x": 1}]')


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(FetchError) as err:
        dataset_spec("riddlesense")
    assert all(name in str(err.value) for name in ("obqa", "arc", "pubmedqa", "piqa", "riddle", "bioasq"))
    assert set(DATASETS) == {"obqa", "arc", "pubmedqa", "piqa", "riddle", "bioasq"}
    assert DEFAULT_BASE_URL == "https://raw.githubusercontent.com/YikunHan42/TinyLLM/main/datasets"


# ---------------------------------------------------------------- fetching from a local server

def test_fetch_writes_a_folder_the_readers_accept_and_a_rerun_downloads_nothing(served, tmp_path):
    out = tmp_path / "data"
    result = fetch_dataset("riddle", out, rationales=True, base_url=served.url, progress=False)
    folder = out / "riddle"
    assert result.folder == folder and result.rows == RIDDLE_ROWS and result.rationale_files == 4
    assert _listing(folder) == _listing(served.root / "riddle")
    assert _listing(out) == ["riddle", *(f"riddle/{p}" for p in _listing(folder))], "no temporary folder left"
    table = load_problems(DataConfig(format="tinyllm", path=str(folder), dataset="riddlesense"), "train")
    assert table.num_rows == 501 and len(table.column("choices")[0]) == 5
    assert len(load_tinyllm_rationales(folder, "train")["llama2_7b"]) == 501
    imported = read_imported(ImportSource(format="tinyllm", path=str(folder), teacher="flan_t5_xl"),
                             table.column("id").to_pylist())
    assert imported.table.num_rows == 501 and imported.missing == 0

    asked = len(served.requests)
    assert asked == 3 + 4
    again = fetch_dataset("riddle", out, rationales=True, base_url=served.url, progress=False)
    assert again.already_complete and again.rows == RIDDLE_ROWS and len(served.requests) == asked


def test_rationales_added_later_fetch_only_the_llm_files(served, tmp_path):
    out = tmp_path / "data"
    first = fetch_dataset("riddle", out, base_url=served.url, progress=False)
    assert first.rationale_files == 0 and not (out / "riddle" / "llm").exists()
    assert served.requests == ["/riddle/riddle_train.json", "/riddle/riddle_valid.json", "/riddle/riddle_test.json"]
    served.requests.clear()
    second = fetch_dataset("riddle", out, rationales=True, base_url=served.url, progress=False)
    assert sorted(second.downloaded) == sorted(f"llm/{p.name}" for p in (served.root / "riddle" / "llm").iterdir())
    assert len(served.requests) == 4 and all(r.startswith("/riddle/llm/") for r in served.requests)
    assert _listing(out / "riddle" / "llm") == _listing(served.root / "riddle" / "llm")


def _break(served: Server, path: str, how: str) -> None:
    file = served.root / "riddle" / path
    if how == "missing":
        file.unlink()
    elif how == "truncated":
        file.write_bytes(file.read_bytes()[:-40])
    elif how == "html":
        file.write_text("<!DOCTYPE html><html><body>rate limited</body></html>")
    elif how == "cut_transfer":
        served.short_body.add(f"/riddle/{path}")
    elif how == "short_rationales":
        file.write_text(json.dumps(json.loads(file.read_text())[:-1]))


@pytest.mark.parametrize("path,how,says", [
    ("riddle_test.json", "missing", "HTTP 404"),
    ("riddle_valid.json", "truncated", "not valid JSON"),
    ("riddle_train.json", "html", "not valid JSON"),
    ("riddle_train.json", "cut_transfer", "download from .* failed"),
    ("llm/train_CoT_1.json", "missing", "HTTP 404"),
    ("llm/train_CoT_1.json", "short_rationales", "0 rows, expected 1|no rows"),
    ("llm/valid_CoT_0.json", "short_rationales", "2 rows, expected 3"),
])
def test_a_bad_file_leaves_nothing_and_is_named(served, tmp_path, path, how, says):
    _break(served, path, how)
    out = tmp_path / "data"
    with pytest.raises(FetchError, match=says) as err:
        fetch_dataset("riddle", out, rationales=True, base_url=served.url, progress=False)
    assert path in str(err.value)
    assert _listing(out) == [], "nothing half-written, no temporary folder left"


def test_a_bad_llm_file_added_later_leaves_the_problems_as_they_were(served, tmp_path):
    out = tmp_path / "data"
    fetch_dataset("riddle", out, base_url=served.url, progress=False)
    before = _listing(out)
    _break(served, "llm/test_CoT_0.json", "truncated")
    with pytest.raises(FetchError, match="llm/test_CoT_0.json"):
        fetch_dataset("riddle", out, rationales=True, base_url=served.url, progress=False)
    assert _listing(out) == before


def test_an_incomplete_folder_in_place_is_refused_not_overwritten(served, tmp_path):
    out = tmp_path / "data"
    fetch_dataset("riddle", out, base_url=served.url, progress=False)
    (out / "riddle" / "riddle_valid.json").write_text("[")
    served.requests.clear()
    with pytest.raises(FetchError, match=r"riddle exists but riddle_valid.json is not a complete copy.*move"):
        fetch_dataset("riddle", out, base_url=served.url, progress=False)
    assert served.requests == [] and (out / "riddle" / "riddle_valid.json").read_text() == "["


def test_pinned_counts_catch_a_short_copy_of_a_known_dataset(tmp_path):
    root = tmp_path / "remote"
    folder = write_riddle(root).rename(root / "pubmedqa")  # well-formed files, but not PubMedQA's 500 / 100 / 400
    for split in RIDDLE_ROWS:
        (folder / f"riddle_{split}.json").rename(folder / f"pubmedqa_{split}.json")
    server = Server(root)
    try:
        with pytest.raises(FetchError, match=r"pubmedqa_train.json: 501 rows, expected 500"):
            fetch_dataset("pubmedqa", tmp_path / "data", base_url=server.url, progress=False)
    finally:
        server.close()
    assert _listing(tmp_path / "data") == []


@pytest.mark.skipif(not (SHARED / "pubmedqa").is_dir(), reason="shared/data/tinyllm is not beside the checkout")
def test_fetch_the_real_pubmedqa_folder(tmp_path):
    """The shared copy of the repository's pubmedqa folder, served as GitHub would, checks against the manifest."""
    root = tmp_path / "remote"
    root.mkdir()
    (root / "pubmedqa").symlink_to(SHARED / "pubmedqa")
    server = Server(root)
    try:
        result = fetch_dataset("pubmedqa", tmp_path / "data", rationales=True, base_url=server.url, progress=False)
    finally:
        server.close()
    assert result.rows == {"train": 500, "valid": 100, "test": 400} and result.rationale_files == 3
    assert len(load_tinyllm_rationales(result.folder, "test")["flan_t5_xl"]) == 400


# ---------------------------------------------------------------- the CLI

def test_cli_fetch_then_rerun(served, tmp_path):
    runner = CliRunner()
    args = ["data", "fetch", "riddle", "--to", str(tmp_path / "data"), "--rationales", "--base-url", served.url]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "problems train 501, valid 3, test 2 + 4 rationale files in llm/; downloaded 7 files" in first.output
    second = runner.invoke(app, [*args, "--quiet"])
    assert second.exit_code == 0 and "already complete, nothing downloaded" in second.output


def test_cli_base_url_from_the_environment(served, tmp_path):
    result = CliRunner().invoke(app, ["data", "fetch", "riddle", "--to", str(tmp_path / "data"), "-q"],
                                env={"TINYLLM_RAY_DATA_URL": served.url})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "riddle" / "riddle_test.json").is_file()


def test_cli_errors_exit_2_with_one_message(served, tmp_path):
    runner = CliRunner()
    unknown = runner.invoke(app, ["data", "fetch", "riddlesense", "--to", str(tmp_path), "--base-url", served.url])
    assert unknown.exit_code == 2
    assert "unknown dataset 'riddlesense'" in unknown.output and "riddle, bioasq" in unknown.output
    _break(served, "riddle_test.json", "missing")
    missing = runner.invoke(app, ["data", "fetch", "riddle", "--to", str(tmp_path / "d"), "--base-url", served.url])
    assert missing.exit_code == 2 and "riddle_test.json: HTTP 404" in missing.output
    assert "Traceback" not in missing.output


def test_a_killed_fetchs_temporary_folder_is_removed_by_the_next_fetch(served, tmp_path):
    import fcntl
    import subprocess
    import sys

    out = tmp_path / "data"
    out.mkdir()
    left_by_killed, running, unknown = (out / f".riddle.partial-{n}" for n in ("killed", "running", "unknown"))
    for folder in (left_by_killed, running, unknown):
        (folder / "half").mkdir(parents=True)
    # a killed fetch: its process took the lock and died, so the kernel released it
    subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
                    "fcntl.flock(f, fcntl.LOCK_EX)", str(out / ".riddle.partial-killed.lock")], check=True)
    with open(out / ".riddle.partial-running.lock", "w") as held:  # a fetch still running (here, this process)
        fcntl.flock(held, fcntl.LOCK_EX)
        fetch_dataset("riddle", out, base_url=served.url, progress=False)
        assert not left_by_killed.exists() and not (out / ".riddle.partial-killed.lock").exists()
        assert running.exists() and unknown.exists()  # unknown: no lock file, e.g. an older version's
        # the fetch's own lock file went with its temporary folder
        assert sorted(p.name for p in out.glob(".riddle.partial-*.lock")) == [".riddle.partial-running.lock"]
    assert (out / "riddle").is_dir()
