"""The `filespool` command: use a spool from the shell, and run work on it."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from filespool.errors import FileStoreError
from filespool.store import FOLDERS, MAILDIR_TMP_AGE, FileStore
from filespool.work import Outcome, Tally, WorkPool

_EPILOG = "A URL is a local path, file:///path, memory://name or s3://bucket/prefix."


class UsageError(Exception):
    """Bad input on the command line: reported in one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    split = argv.index("--") if "--" in argv else len(argv)
    arguments = parser.parse_args(argv[:split])
    if arguments.run is _work:
        arguments.command = argv[split + 1 :]  # everything after the first "--", options and all
    elif split < len(argv):
        arguments = parser.parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except (FileStoreError, UsageError, ValueError, TypeError, OSError) as error:
        print(f"filespool: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filespool",
        description="Maildir-style spools: write in tmp/, publish into new/, claim into cur/.",
        epilog=_EPILOG,
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description or help, epilog=_EPILOG)
        sub.add_argument("url", help="the spool")
        sub.add_argument(
            "-o",
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a storage option for the backend (JSON values are decoded); repeatable",
        )
        return sub

    command("init", "create a spool: its root and tmp/, new/, cur/").set_defaults(run=_init)

    put = command("put", "deliver files into new/, each under a new unique name")
    put.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for standard input")
    put.set_defaults(run=_put)

    ls = command("ls", "list the files of a folder, oldest first")
    ls.add_argument("folder", nargs="?", default="new", choices=FOLDERS)
    ls.set_defaults(run=_ls)

    cat = command("cat", "write a file's content to standard output")
    cat.add_argument("name")
    cat.add_argument("folder", nargs="?", default="new", choices=FOLDERS)
    cat.set_defaults(run=_cat)

    stats = command("stats", "count the files of each folder, and the age of the oldest")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_stats)

    recover = command(
        "recover",
        "give back claims whose lease expired",
        "Move files claimed longer ago than --older-than from cur/ back to new/ "
        "(or to failed/ after --max-attempts tries).",
    )
    recover.add_argument("--older-than", type=_duration, required=True, metavar="AGE")
    recover.add_argument("--max-attempts", type=_positive, default=5, metavar="N")
    recover.set_defaults(run=_recover)

    cleanup = command("cleanup", "remove files left in tmp/ by writers that died")
    cleanup.add_argument(
        "--older-than", type=_duration, default=MAILDIR_TMP_AGE, metavar="AGE", help="default 36h"
    )
    cleanup.set_defaults(run=_cleanup)

    work = command(
        "work",
        "run a command for every file, with several workers",
        "Workers claim files and run COMMAND for each. '{}' in its arguments is replaced "
        "by the file's path (a local copy for remote spools); without '{}' the file's content "
        "is its standard input. FILESPOOL_NAME and FILESPOOL_ATTEMPT are in its environment. "
        "Exit status 0 acks the file; any other status (a crash too) releases it for "
        "another try, and the --max-attempts-th try moves it to failed/. The first "
        "SIGINT/SIGTERM stops taking files and lets running commands finish; a second "
        "aborts them and gives their files back. Exit status: 0, or 1 if a file failed.",
    )
    work.usage = "filespool work [options] URL -- COMMAND [ARGS...]"
    work.add_argument("-j", "--jobs", type=_positive, default=1, metavar="N", help="workers (1)")
    work.add_argument("--once", action="store_true", help="drain the spool, then exit")
    work.add_argument("--max-attempts", type=_positive, default=5, metavar="N", help="(5)")
    work.add_argument(
        "--lease",
        type=_duration,
        default=600.0,
        metavar="AGE",
        help="a claim not renewed for this long is given back (10m)",
    )
    output = work.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    output.add_argument("--json", action="store_true", help="print JSON lines")
    work.set_defaults(run=_work, command=[])

    demo = commands.add_parser(
        "demo",
        help="run producers and consumers on a spool and verify exactly-once claims",
        description=(
            "Producer processes deliver messages while consumer processes claim, read and "
            "ack them; at the end every delivered message must have been claimed exactly "
            "once. Uses a fresh temporary local spool unless --url is given."
        ),
    )
    demo.add_argument("--url", help="spool to use (default: a new temporary local directory)")
    demo.add_argument("--messages", type=_positive, default=5000, help="default: %(default)s")
    demo.add_argument("--producers", type=_positive, default=2, help="default: %(default)s")
    demo.add_argument("--consumers", type=_positive, default=4, help="default: %(default)s")
    demo.add_argument("--size", type=_positive, default=1024, help="bytes each (%(default)s)")
    demo.set_defaults(run=_demo)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90, 30s, 10m, 2h, 1d")
    return float(match[1]) * _UNITS[match[2]]


def _open(arguments: argparse.Namespace, **settings: Any) -> FileStore:
    options = {}
    for option in arguments.option:
        key, equals, value = option.partition("=")
        if not equals or not key:
            raise UsageError(f"--option {option!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return FileStore(arguments.url, **settings, **options)


def _init(arguments: argparse.Namespace) -> int:
    store = _open(arguments)
    store.prepare()
    print(store.url)
    return 0


def _put(arguments: argparse.Namespace) -> int:
    store = _open(arguments)
    for path in arguments.files:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
        print(store.deliver(data))
    return 0


def _ls(arguments: argparse.Namespace) -> int:
    for path in _open(arguments).list(arguments.folder):
        print(path)
    return 0


def _cat(arguments: argparse.Namespace) -> int:
    with _open(arguments).open(arguments.name, arguments.folder, "rb") as file:
        sys.stdout.buffer.write(file.read())
    return 0


def _stats(arguments: argparse.Namespace) -> int:
    stats = _open(arguments).stats()
    if arguments.json:
        rows = {
            folder: {"count": s.count, "oldest_age": s.oldest_age} for folder, s in stats.items()
        }
        print(json.dumps(rows))
        return 0
    print(f"{'folder':<8}{'files':>10}  oldest")
    for folder, folder_stats in stats.items():
        age = "-" if folder_stats.oldest_age is None else _age(folder_stats.oldest_age)
        print(f"{folder:<8}{folder_stats.count:>10}  {age}")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _recover(arguments: argparse.Namespace) -> int:
    store = _open(arguments, max_attempts=arguments.max_attempts)
    recovery = store.recover(older_than=arguments.older_than)
    for name in recovery.returned:
        print(f"returned {name}")
    for name in recovery.failed:
        print(f"failed {name}")
    return 0


def _cleanup(arguments: argparse.Namespace) -> int:
    for name in _open(arguments).cleanup(older_than=arguments.older_than):
        print(f"removed {name}")
    return 0


def _work(arguments: argparse.Namespace) -> int:
    command = arguments.command
    if not command:
        raise UsageError("work needs a command: filespool work URL -- COMMAND [ARGS...]")
    if shutil.which(command[0]) is None:
        raise UsageError(f"command not found: {command[0]!r}")
    store = _open(arguments, max_attempts=arguments.max_attempts)
    store.names("new")  # fail now, with one line, if the spool is not there
    if arguments.json:
        reporter: _Reporter = _JsonReporter(sys.stdout)
    elif arguments.quiet:
        reporter = _Reporter()
    elif sys.stderr.isatty():
        reporter = _ProgressReporter(store)
    else:
        reporter = _LineReporter(sys.stderr)
    pool = WorkPool(
        store,
        command,
        jobs=arguments.jobs,
        once=arguments.once,
        lease=arguments.lease,
        report=reporter.outcome,
    )
    with _signals_stop(pool), reporter.showing(pool.tally):
        tally = pool.run()
    reporter.summary(tally)
    return 1 if tally.failed else 0


@contextmanager
def _signals_stop(pool: WorkPool) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        pool.stop()

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _Reporter:
    """Says nothing (`--quiet`); the base of the other reporters."""

    def outcome(self, outcome: Outcome) -> None:
        """One file was finished."""

    @contextmanager
    def showing(self, tally: Tally) -> Iterator[None]:
        """Show progress while the work runs."""
        yield

    def summary(self, tally: Tally) -> None:
        """The work is over."""


class _LineReporter(_Reporter):
    """Plain log lines, for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def outcome(self, outcome: Outcome) -> None:
        detail = "" if outcome.returncode == 0 else f", exit status {outcome.returncode}"
        print(
            f"{outcome.status} {outcome.name} (attempt {outcome.attempt}, "
            f"{outcome.seconds:.2f} s{detail})",
            file=self.stream,
            flush=True,
        )

    def summary(self, tally: Tally) -> None:
        print(_summary_line(tally), file=self.stream, flush=True)


class _JsonReporter(_Reporter):
    """JSON lines: one per finished file, then a summary."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def outcome(self, outcome: Outcome) -> None:
        line = json.dumps({"event": "file", **outcome.__dict__})
        with self._lock:
            print(line, file=self.stream, flush=True)

    def summary(self, tally: Tally) -> None:
        fields = {
            "acked": tally.acked,
            "retried": tally.retried,
            "failed": tally.failed,
            "lost": tally.lost,
        }
        print(
            json.dumps({"event": "summary", **fields, "seconds": tally.seconds}), file=self.stream
        )


class _ProgressReporter(_Reporter):
    """A live progress display on the terminal (rich)."""

    def __init__(self, store: FileStore) -> None:
        self.store = store

    @contextmanager
    def showing(self, tally: Tally) -> Iterator[None]:
        # Imported here: only a terminal pays for rich's import time.
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("working", total=None, detail="")
            stop = False

            def refresh() -> None:
                while not stop:
                    waiting = len(self.store.names("new"))
                    done = tally.acked + tally.failed
                    progress.update(
                        task,
                        completed=done,
                        total=done + tally.running + waiting,
                        detail=f"running {tally.running}, retried {tally.retried}, "
                        f"failed {tally.failed}, waiting {waiting}",
                    )
                    time.sleep(0.2)

            updater = threading.Thread(target=refresh, daemon=True)
            updater.start()
            try:
                yield
            finally:
                stop = True
                updater.join()

    def summary(self, tally: Tally) -> None:
        print(_summary_line(tally), file=sys.stderr)


def _summary_line(tally: Tally) -> str:
    rate = (tally.acked + tally.failed) / tally.seconds if tally.seconds else 0.0
    lost = f", lease lost {tally.lost}" if tally.lost else ""
    return (
        f"acked {tally.acked}, retried {tally.retried}, failed {tally.failed}{lost} "
        f"in {tally.seconds:.1f} s ({rate:,.1f} files/s)"
    )


@dataclass
class DemoResult:
    """What a demo run did, and whether every message was claimed exactly once."""

    delivered: list[str]
    claimed: list[str]
    seconds: float
    left_over: int

    @property
    def duplicates(self) -> int:
        """Claims beyond the first of a message."""
        return sum(count - 1 for count in Counter(self.claimed).values())

    @property
    def lost(self) -> int:
        """Delivered messages nobody claimed."""
        return len(set(self.delivered) - set(self.claimed))

    @property
    def exactly_once(self) -> bool:
        """Every delivered message claimed once, nothing else claimed, nothing left."""
        return (
            Counter(self.claimed) == Counter(self.delivered)
            and len(set(self.delivered)) == len(self.delivered)
            and self.left_over == 0
        )


def _demo(arguments: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="filespool-demo-") as directory:
        url = arguments.url or f"{directory}/spool"
        store = FileStore(url)
        store.prepare()
        print(
            f"spool {store.url}: {arguments.producers} producers deliver {arguments.messages} "
            f"messages of {arguments.size} bytes; {arguments.consumers} consumers claim them",
            flush=True,
        )
        result = run_demo(
            store, arguments.messages, arguments.producers, arguments.consumers, arguments.size
        )
    rate = len(result.claimed) / result.seconds if result.seconds else float("inf")
    print(f"delivered:    {len(result.delivered)}")
    print(f"claimed:      {len(result.claimed)}")
    print(f"duplicates:   {result.duplicates}")
    print(f"lost:         {result.lost}")
    print(f"exactly once: {'yes' if result.exactly_once else 'NO'}")
    print(f"throughput:   {rate:,.0f} messages/s ({result.seconds:.2f} s end to end)")
    return 0 if result.exactly_once else 1


def run_demo(
    store: FileStore, messages: int, producers: int, consumers: int, size: int
) -> DemoResult:
    """Deliver `messages` with producer processes while consumer processes drain the store."""
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    producing: Any = context.Event()
    shares = [messages // producers + (i < messages % producers) for i in range(producers)]
    workers = [
        context.Process(target=_produce, args=(store, share, size, results)) for share in shares
    ]
    workers += [
        context.Process(target=_consume, args=(store, producing, results)) for _ in range(consumers)
    ]
    producing.set()
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    delivered: list[str] = []
    for _ in range(producers):
        delivered.extend(results.get())
    producing.clear()
    claimed: list[str] = []
    for _ in range(consumers):
        claimed.extend(results.get())
    seconds = time.perf_counter() - started
    for worker in workers:
        worker.join()
    left_over = sum(len(store.names(folder)) for folder in FOLDERS)
    return DemoResult(delivered, claimed, seconds, left_over)


def _produce(store: FileStore, count: int, size: int, results: Any) -> None:
    payload = b"m" * size
    results.put([store.deliver(payload) for _ in range(count)])


def _consume(store: FileStore, producing: Any, results: Any) -> None:
    claimed: list[str] = []
    while True:
        # Read before claiming: nothing to claim after the producers finished means drained.
        finished = not producing.is_set()
        claim = store.claim(wait=None if finished else 0.05)
        if claim is None:
            if finished:
                break
            continue
        claim.read()
        claim.ack()
        claimed.append(claim.name)
    results.put(claimed)
