"""How `filespool work` reports: quiet, log lines, JSON lines, or a live terminal display.

A reporter hears of each finished file (`outcome`), passes on a command's grouped
output (`output`), shows progress while the run lasts (`showing`), and sums up at the
end (`summary`). Reports and grouped output are written one whole piece at a time, so
that they never interleave.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, TYPE_CHECKING, BinaryIO, TextIO

from filespool.errors import FileStoreError
from filespool.store import FileStore
from filespool.work import Outcome, Tally

if TYPE_CHECKING:
    from rich.console import Console


class Reporter:
    """Says nothing (`--quiet`), but passes on grouped output; the base of the others.

    A command's standard output goes to `stdout`, its standard error to `stderr`.
    """

    def __init__(self, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> None:
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr.buffer
        self._lock = threading.Lock()

    def outcome(self, outcome: Outcome) -> None:
        """One file was finished."""

    def output(self, outcome: Outcome, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        """A command's whole output, once it ended (`--output group`), from its spill files."""
        with self._lock:
            for stream, spill in ((self.stdout, stdout), (self.stderr, stderr)):
                shutil.copyfileobj(spill, stream)  # in chunks: the output may be huge
                stream.flush()

    @contextmanager
    def showing(self, tally: Tally) -> Iterator[None]:
        """Show progress while the work runs."""
        yield

    def stopping(self, running: int) -> None:
        """The first signal came: no new files are taken."""

    def summary(self, tally: Tally) -> None:
        """The work is over."""


class LineReporter(Reporter):
    """Plain log lines on `stream`, for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def outcome(self, outcome: Outcome) -> None:
        detail = f", {outcome.reason}" if outcome.reason else ""
        self._say(
            f"{outcome.status} {outcome.name} (attempt {outcome.attempt}, "
            f"{outcome.seconds:.2f} s{detail})"
        )

    def stopping(self, running: int) -> None:
        self._say(
            f"stopping: taking no new files, letting {running} running command(s) finish; "
            "signal again to abort them (their files are given back, no try counted)"
        )

    def summary(self, tally: Tally) -> None:
        self._say(summary_line(tally))

    def _say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)


class JsonReporter(Reporter):
    """JSON lines on `stream`: one per finished file, then a summary. Nothing else is
    written to `stream`: commands' output goes to standard error."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stdout=sys.stderr.buffer)
        self.stream = stream

    def outcome(self, outcome: Outcome) -> None:
        self._write({"event": "file", **outcome.__dict__})

    def stopping(self, running: int) -> None:
        self._write({"event": "stopping", "running": running})

    def summary(self, tally: Tally) -> None:
        fields = {
            "acked": tally.acked,
            "retried": tally.retried,
            "failed": tally.failed,
            "lost": tally.lost,
            "stopped": tally.stopped,
        }
        self._write({"event": "summary", **fields, "seconds": tally.seconds})

    def _write(self, fields: dict[str, object]) -> None:
        line = json.dumps(fields)
        with self._lock:
            print(line, file=self.stream, flush=True)


class ProgressReporter(Reporter):
    """A live progress display on the terminal (rich); commands' grouped output is
    printed above it, so that it never breaks the display."""

    def __init__(self, store: FileStore) -> None:
        super().__init__()
        self.store = store
        self._console: Console | None = None

    def output(self, outcome: Outcome, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        console = self._console
        if console is None:
            super().output(outcome, stdout, stderr)
            return
        # What would land on the terminal is printed above the display, never through it;
        # standard output sent elsewhere (a file, a pipe) is written there as it is.
        on_terminal = [stderr]
        if self.stdout.isatty():
            on_terminal.insert(0, stdout)
        else:
            super().output(outcome, stdout, io.BytesIO())
        with self._lock:
            for spill in on_terminal:
                for line in io.TextIOWrapper(spill, encoding="utf-8", errors="replace"):
                    console.print(line.rstrip("\n"), markup=False, highlight=False)

    def stopping(self, running: int) -> None:
        message = (
            f"stopping: letting {running} running command(s) finish; "
            "press Ctrl-C again to abort them"
        )
        if self._console is not None:
            self._console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    @contextmanager
    def showing(self, tally: Tally) -> Iterator[None]:
        # Imported here: only a terminal pays for rich's import time.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        console = Console(stderr=True)
        with Progress(*columns, console=console, transient=False, expand=False) as progress:
            task = progress.add_task("working", total=None, detail="")
            self._console = progress.console
            stop = threading.Event()

            def update() -> None:
                # Listing new/ is not free (a LIST request on S3): once a second, and a
                # failed listing counts nothing waiting.
                waiting = 0
                with suppress(FileStoreError):
                    waiting = len(self.store.names("new"))
                done = tally.acked + tally.failed
                progress.update(
                    task,
                    completed=done,
                    total=done + tally.running + waiting,
                    detail=_detail(tally, waiting, console.width),
                )

            def refresh() -> None:
                while not stop.wait(1.0):
                    update()

            update()
            updater = threading.Thread(target=refresh, daemon=True)
            updater.start()
            try:
                yield
            finally:
                stop.set()
                updater.join()
                update()  # the final counts, not those of up to a second ago
                self._console = None

    def summary(self, tally: Tally) -> None:
        print(summary_line(tally), file=sys.stderr)


def _detail(tally: Tally, waiting: int, width: int) -> str:
    """The counts beside the bar, shorter on a narrow terminal (the total must fit)."""
    if width >= 110:
        return (
            f"running {tally.running}, retried {tally.retried}, failed {tally.failed}, "
            f"waiting {waiting}"
        )
    return f"run {tally.running} retry {tally.retried} fail {tally.failed}"


def summary_line(tally: Tally) -> str:
    """The run in one line: counts, time and rate."""
    rate = (tally.acked + tally.failed) / tally.seconds if tally.seconds else 0.0
    lost = f", lease lost {tally.lost}" if tally.lost else ""
    stopped = f", stopped {tally.stopped}" if tally.stopped else ""
    return (
        f"acked {tally.acked}, retried {tally.retried}, failed {tally.failed}{lost}{stopped} "
        f"in {tally.seconds:.1f} s ({rate:,.1f} files/s)"
    )
