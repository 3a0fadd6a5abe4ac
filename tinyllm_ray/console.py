"""The console a person reads: a line when a stage starts and one when it ends, one progress display per stage,
warnings that matter (each once), errors, the closing summary. Everything else the process prints (INFO logs,
Python warnings, Ray's, vLLM's and DeepSpeed's output, the workers' output Ray forwards) goes to
``runs/<job>/logs/console.log``; ``--verbose`` leaves it all on the console, as before. Glue: file descriptors and
logging handlers; the text of a progress line is :mod:`tinyllm_ray.progress`'s.

Output is moved at the file-descriptor level when the console is a real file (a terminal, a pipe, ``ray job
logs``), so C extensions and child processes (Ray's raylet, vLLM) land in the log too; under a test runner's fake
stream only Python's ``sys.stdout``/``sys.stderr`` move.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tinyllm_ray.progress import ProgressDisplay, format_duration

LOG_FILE = "console.log"
# Seconds between two progress lines without a terminal; a user's value wins (e.g. 5 for a short CI job).
INTERVAL_ENV = "TINYLLM_PROGRESS_INTERVAL_S"

log = logging.getLogger("tinyllm_ray")


class Console:
    """Where the stages' person-facing lines go. ``live``: a terminal, so progress redraws one line in place."""

    def __init__(self, stream: TextIO, verbose: bool = True, live: bool | None = None):
        self.stream, self.verbose = stream, verbose
        self.live = _is_terminal(stream) if live is None else live
        self.interval = float(os.environ.get(INTERVAL_ENV, 30))
        self._warned: set[str] = set()
        self._started: dict[str, float] = {}

    def say(self, text: str) -> None:
        self.stream.write(text.rstrip("\n") + "\n")
        self.stream.flush()

    def _say_folded(self, text: str, indent: int) -> None:
        """In a terminal, a long line folds between words under its text (the terminal would cut words in two);
        elsewhere (``ray job logs``, a pipe) it stays one line, so each stage event is one line to grep."""
        if self.live:
            width = _columns(self.stream)
            text = "\n".join(textwrap.fill(line, width=width, subsequent_indent=" " * indent, break_long_words=False,
                                            break_on_hyphens=False) for line in text.splitlines())
        self.say(text)

    def _stage_line(self, stage: str, event: str, what: str) -> None:
        self._say_folded(f"{stage:<9} {event:<8} {what}", indent=19)

    def stage_started(self, stage: str, what: str) -> None:
        self._started[stage] = time.monotonic()
        self._stage_line(stage, "started", what)

    def stage_finished(self, stage: str, what: str) -> None:
        seconds = time.monotonic() - self._started.pop(stage, time.monotonic())
        self._stage_line(stage, "done", f"{what} ({format_duration(seconds)})")

    def stage_reused(self, stage: str, what: str) -> None:
        self._stage_line(stage, "reused", what)

    def warn(self, message: str) -> None:
        """A warning the user should act on, once per distinct text (the log keeps every occurrence)."""
        if message not in self._warned:
            self._warned.add(message)
            self._say_folded(f"warning: {message}", indent=9)

    def progress(self, label: str, total: int, unit: str) -> ProgressDisplay:
        if self.live:
            from tinyllm_ray.progress_live import LiveProgress

            return LiveProgress(self.stream, label, total, unit)
        from tinyllm_ray.progress_lines import LineProgress

        return LineProgress(self.stream, label, total, unit, interval=self.interval)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 80


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_active: list[Console] = []


def current() -> Console:
    """The console of the running command; outside one (library use, tests) a verbose one on ``sys.stdout``."""
    return _active[-1] if _active else Console(sys.stdout)


class _ConsoleWarnings(logging.Handler):
    """The project's own warnings (logger ``tinyllm_ray``) on the console too, each text once."""

    def __init__(self, console: Console):
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.warn(record.getMessage())


class _PackageWarnings(_ConsoleWarnings):
    """Python warnings (``logging.captureWarnings``) raised by this package's own code, e.g. a data file whose rows
    repeat an option: on the console as ``Category: message``; other libraries' stay in the log."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        where, _, rest = text.partition(": ")
        if f"{os.sep}tinyllm_ray{os.sep}" in where:
            self.console.warn(rest.splitlines()[0])


@contextlib.contextmanager
def warnings_shown(verbose: bool) -> Iterator[Console]:
    """Before a command's log exists (its checks run first, so a refused command writes nothing): the project's
    warnings on the console as ``warning: ...``; with ``verbose`` logging's own handlers show them."""
    console = Console(sys.stdout, verbose=verbose)
    if verbose:
        yield console
        return
    handler, propagate = _ConsoleWarnings(console), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield console
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


@contextlib.contextmanager
def routed_output(log_dir: Path, verbose: bool, on_exit: Callable[[], None] | None = None) -> Iterator[Console]:
    """The command's console; unless ``verbose``, everything else goes to ``log_dir/console.log`` (appended, so a
    resumed run keeps its history). ``on_exit`` runs while output is still routed (shutting the local Ray cluster
    down prints its own lines)."""
    if verbose:
        console = Console(sys.stdout, verbose=True)
        _active.append(console)
        try:
            yield console
        finally:
            _active.pop()
            if on_exit:
                on_exit()
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_FILE
    sink = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    sink.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    saved_streams, root = (sys.stdout, sys.stderr), logging.getLogger()
    saved_logging = (root.handlers[:], root.level, log.handlers[:])
    fds = _redirect_fds(sink)
    console_stream = os.fdopen(os.dup(fds[0]), "w", buffering=1, encoding="utf-8") if fds else sys.stdout
    if fds is None:
        sys.stdout = sys.stderr = sink  # a test runner's fake stream: only Python-level output can move
    console = Console(console_stream, verbose=False)
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers, root.level = [handler], logging.INFO
    log.addHandler(_ConsoleWarnings(console))
    package_warnings = _PackageWarnings(console)
    logging.getLogger("py.warnings").addHandler(package_warnings)
    logging.captureWarnings(True)
    _active.append(console)
    try:
        yield console
    except BaseException:  # the traceback in the log too, beside what led to it
        handler.handle(logging.LogRecord("tinyllm_ray", logging.ERROR, __file__, 0, "command failed", None,
                                         sys.exc_info()))
        raise
    finally:
        try:
            if on_exit:
                on_exit()
        finally:
            _active.pop()
            logging.captureWarnings(False)
            logging.getLogger("py.warnings").removeHandler(package_warnings)
            root.handlers, root.level = saved_logging[0], saved_logging[1]
            log.handlers = saved_logging[2]
            sys.stdout, sys.stderr = saved_streams
            if fds is not None:
                _restore_fds(fds)
                console_stream.close()
            sink.close()


def _redirect_fds(sink: TextIO) -> tuple[int, int] | None:
    """Point fds 1 and 2 at ``sink``; return copies of the originals, or None when stdout/stderr have no fd."""
    try:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    if (out, err) != (1, 2):
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    return saved


def _restore_fds(saved: tuple[int, int]) -> None:
    with contextlib.suppress(ValueError, OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])
