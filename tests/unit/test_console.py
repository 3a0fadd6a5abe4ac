"""The console a person reads: progress text, periodic lines without a terminal, warnings once, and routing
everything else into the run's log (checked in a child process, where file descriptors 1 and 2 are real)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

from tinyllm_ray.console import Console
from tinyllm_ray.progress import ProgressState, eta_seconds, format_duration, progress_text, rate_text
from tinyllm_ray.progress_lines import LineProgress


def test_durations_stay_short():
    assert [format_duration(s) for s in (0, 44.6, 60, 190, 3600, 7500)] == ["0s", "45s", "1m00s", "3m10s", "1h00m",
                                                                          "2h05m"]


def test_eta_needs_a_rate_and_a_total():
    assert eta_seconds(0, 10, 5.0) is None and eta_seconds(3, 0, 5.0) is None
    assert eta_seconds(2, 10, 4.0) == 16.0
    assert eta_seconds(12, 10, 4.0) == 0.0  # more done than planned (a resumed count): no negative time


def test_progress_text_reads_as_one_line():
    state = ProgressState("train", 12, 139, "steps", 190.0, {"loss": "answer 0.73 tiny_a 1.12", "speed": "95 tok/s",
                                                             "empty": ""})
    assert progress_text(state) == "train  steps 12/139 (8%)  answer 0.73 tiny_a 1.12  95 tok/s  3m10s, ETA 33m31s"
    assert "ETA" not in progress_text(ProgressState("generate", 0, 4, "shards", 1.0))


def test_rates_keep_a_decimal_only_when_small():
    assert rate_text(95.4, 1.0, "tok") == "95 tok/s" and rate_text(7.25, 1.0, "tok") == "7.2 tok/s"
    assert rate_text(5, 0.0, "rows") == "0.0 rows/s"


def test_line_progress_prints_at_most_once_an_interval():
    now = [0.0]
    out = io.StringIO()
    bar = LineProgress(out, "train", 10, "steps", interval=30, clock=lambda: now[0])
    for t, done in ((1, 1), (10, 2), (31, 3), (45, 4), (62, 5)):
        now[0] = float(t)
        bar.update(done)
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1/10", "3/10", "5/10"]


def test_a_warning_shows_once():
    out = io.StringIO()
    console = Console(out, verbose=False, live=False)
    for _ in range(3):
        console.warn("fp16 with a T5 student overflows")
    console.stage_started("train", "3 steps")
    console.stage_finished("train", "3 steps")
    lines = out.getvalue().splitlines()
    assert lines[0] == "warning: fp16 with a T5 student overflows" and len(lines) == 3
    assert lines[1].startswith("train     started") and lines[2].startswith("train     done")


LONG = "builtin:smollm2-135m, 48 problems x 3 tasks, 6 steps, ZeRO-2 x 2 workers on a cluster of four nodes"


def test_a_long_stage_line_folds_between_words_in_a_terminal_only():
    folded, plain = io.StringIO(), io.StringIO()
    Console(folded, verbose=False, live=True).stage_started("train", LONG)  # no terminal size to read: 80 columns
    Console(plain, verbose=False, live=False).stage_started("train", LONG)
    lines = folded.getvalue().splitlines()
    assert len(lines) > 1 and all(len(line) <= 80 for line in lines)
    assert all(line.startswith(" " * 19) and not line.startswith(" " * 20) for line in lines[1:])
    assert " ".join(line.strip() for line in lines) == plain.getvalue().strip()  # no word cut or lost
    assert plain.getvalue().count("\n") == 1


ROUTED = textwrap.dedent("""
    import logging, os, sys, warnings
    from pathlib import Path
    from tinyllm_ray.console import routed_output, current

    with routed_output(Path(sys.argv[1]), verbose=False) as console:
        assert current() is console
        print("library print")
        os.write(1, b"C-level stdout\\n")
        os.write(2, b"C-level stderr\\n")
        logging.getLogger("tinyllm_ray").info("an info line")
        logging.getLogger("tinyllm_ray").warning("mind this")
        logging.getLogger("tinyllm_ray").warning("mind this")
        warnings.warn("deprecated thing", DeprecationWarning)
        from tinyllm_ray import data  # a warning from the package's own code reaches the console
        warnings.warn_explicit("rows repeat a wrong option", UserWarning, data.__file__, 1)
        console.stage_started("train", "2 steps")
    print("after the command")
""")


def test_routed_output_keeps_the_console_to_its_own_lines(tmp_path: Path):
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-c", ROUTED, str(logs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["warning: mind this", "warning: UserWarning: rows repeat a wrong option",
                                        "train     started  2 steps", "after the command"]
    assert proc.stderr == ""
    log = (logs / "console.log").read_text()
    for text in ("library print", "C-level stdout", "C-level stderr", "an info line", "deprecated thing"):
        assert text in log
    assert log.count("mind this") == 2  # the log keeps every occurrence


def test_a_failing_command_leaves_its_traceback_in_the_log(tmp_path: Path):
    script = ROUTED.replace('console.stage_started("train", "2 steps")', 'raise RuntimeError("boom")')
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr  # Python's own report, on the console
    assert "RuntimeError: boom" in (tmp_path / "console.log").read_text()


def test_a_broken_channel_stops_reporting_not_the_work():
    from tinyllm_ray import progress_channel

    class Gone:
        def put(self, event):
            raise ConnectionError("actor died")

    progress_channel.install(Gone())
    progress_channel.publish({"done": 1}, final=True)
    assert progress_channel._channel is None
