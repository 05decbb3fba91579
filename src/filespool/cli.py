"""The `filespool` command: use a spool from the shell, and run work on it."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from importlib.metadata import version
from typing import IO, Any, BinaryIO

from filespool.demo import run_demo
from filespool.errors import FileStoreError, NotPrepared
from filespool.reporting import JsonReporter, LineReporter, ProgressReporter, Reporter
from filespool.store import FOLDERS, MAILDIR_TMP_AGE, FileStore
from filespool.work import OUTPUTS, Outcome, WorkPool

_EPILOG = "A URL is a local path, file:///path, or s3://bucket/prefix (memory:// for the demo)."
_MIN_LEASE, _MAX_LEASE = 1.0, 30 * 86400.0
_SETTINGS = {"max_attempts": "--max-attempts"}  # FileStore settings the commands set


class UsageError(Exception):
    """Bad input on the command line: reported in one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    split = argv.index("--") if "--" in argv else len(argv)
    arguments, extra = parser.parse_known_args(argv[:split])
    if arguments.run is _put and extra and not any(e.startswith("-") and e != "-" for e in extra):
        arguments.files += extra  # files after an option: argparse leaves them over
    elif extra:
        parser.parse_args(argv[:split])  # says what is wrong, and exits 2
    if arguments.run is _work:
        arguments.command = argv[split + 1 :]  # everything after the first "--", options and all
    elif split < len(argv):
        arguments = parser.parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other filters do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except NotPrepared as error:
        url = getattr(arguments, "url", None)
        advice = f"run `filespool init {url}` first" if url else "run `filespool init URL` first"
        print(f"filespool: {str(error).replace('call prepare() first', advice)}", file=sys.stderr)
        return 2
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
    parser.add_argument("--version", action="version", version=f"filespool {version('filespool')}")
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
            help="a storage option for the backend (JSON values are decoded), or a store "
            "setting such as durable=false (no fsync: faster, not crash-safe); repeatable",
        )
        return sub

    init = command("init", "create a spool: its root and tmp/, new/, cur/")
    init.add_argument(
        "--private",
        action="store_true",
        help="local spools: files 0600 and folders 0700 whatever the umask (default: the "
        "umask decides, usually 0644 and 0755); give -o private=true to the other commands",
    )
    init.set_defaults(run=_init)

    put = command("put", "deliver files into new/, each under a new unique name")
    put.add_argument("files", nargs="*", metavar="FILE", help="a file, or - for standard input")
    put.add_argument(
        "--lines", action="store_true", help="deliver each line as a message (default input: -)"
    )
    put.set_defaults(run=_put)

    ls = command("ls", "list the files of a folder, oldest first")
    ls.add_argument("folder", nargs="?", default="new", choices=FOLDERS)
    ls.add_argument("-0", "--null", action="store_true", help="end each path with NUL, not newline")
    ls.set_defaults(run=_ls)

    cat = command("cat", "write a file's content to standard output")
    cat.add_argument("name", help="the file's name (as `ls` shows it, without the folder)")
    cat.add_argument("folder", nargs="?", default="new", choices=FOLDERS, help="(new)")
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
    recover.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="the lease: a claim not renewed for this long is given back (0 takes every claim)",
    )
    recover.add_argument(
        "--max-attempts", type=_positive, default=5, metavar="N", help="tries before failed/ (5)"
    )
    recover.set_defaults(run=_recover)

    cleanup = command("cleanup", "remove files left in tmp/ by writers that died")
    cleanup.add_argument(
        "--older-than", type=_duration, default=MAILDIR_TMP_AGE, metavar="AGE", help="default 36h"
    )
    cleanup.set_defaults(run=_cleanup)

    failed = command("failed", "list the dead letters in failed/, with tries and last reason")
    failed.add_argument("--json", action="store_true", help="print JSON lines")
    failed.set_defaults(run=_failed)

    requeue = command(
        "requeue", "move dead letters from failed/ back to new/, their tries reset to 0"
    )
    requeue.add_argument("names", nargs="*", metavar="NAME", help="dead letters to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every dead letter")
    requeue.set_defaults(run=_requeue)

    _work_parser(command)
    _demo_parser(commands)
    return parser


def _work_parser(command: Any) -> None:
    work = command(
        "work",
        "run a command for every file, with several workers",
        "Workers claim files and run COMMAND for each. '{}' in its arguments is replaced "
        "by the file's path (an unnamed local copy, /dev/fd/N, for remote spools); without "
        "'{}' the file's content is its standard input. FILESPOOL_NAME and FILESPOOL_ATTEMPT "
        "are in its environment. Exit status 0 acks the file; any other status (a crash, a "
        "timeout) releases it for another try, and the --max-attempts-th try moves it to "
        "failed/. The first SIGINT/SIGTERM stops taking files and lets running commands "
        "finish; a second aborts them and gives their files back, no try counted. Every "
        "worker of a spool must use the same --lease. Exit status: 0; 1 if a file failed; "
        "128+N if stopped by signal N (130 for SIGINT, 143 for SIGTERM).",
    )
    work.usage = "filespool work [options] URL -- COMMAND [ARGS...]"
    work.add_argument("-j", "--jobs", type=_positive, default=1, metavar="N", help="workers (1)")
    work.add_argument("--once", action="store_true", help="drain the spool, then exit")
    work.add_argument("--max-attempts", type=_positive, default=5, metavar="N", help="(5)")
    work.add_argument(
        "--lease",
        type=_lease,
        default=600.0,
        metavar="AGE",
        help="a claim not renewed for this long is given back (10m; 1s to 30d); the same "
        "for every worker of the spool",
    )
    work.add_argument(
        "--timeout",
        type=_timeout,
        metavar="AGE",
        help="kill a command running this long; that counts as a failed try",
    )
    work.add_argument(
        "--output",
        choices=OUTPUTS,
        default="group",
        help="commands' output: group (whole, when each ends; the default), inherit "
        "(straight through), discard",
    )
    work.add_argument(
        "--results",
        metavar="DIR",
        help="write each command's output to DIR/NAME.out and DIR/NAME.err instead (the "
        "last try's), as GNU parallel's --results",
    )
    verbosity = work.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    verbosity.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines on standard output (commands' output goes to standard error)",
    )
    work.set_defaults(run=_work, command=[])


def _demo_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run producers and consumers on a spool and verify exactly-once claims",
        description=(
            "Producer processes deliver messages while consumer processes claim, read and "
            "ack them; at the end every delivered message must have been claimed exactly "
            "once. Uses a fresh temporary local spool unless --url is given; on memory:// "
            "producers and consumers are threads of one process."
        ),
    )
    demo.add_argument("--url", help="spool to use (default: a new temporary local directory)")
    demo.add_argument("--messages", type=_positive, default=5000, help="default: %(default)s")
    demo.add_argument("--producers", type=_positive, default=2, help="default: %(default)s")
    demo.add_argument("--consumers", type=_positive, default=4, help="default: %(default)s")
    demo.add_argument("--size", type=_positive, default=1024, help="bytes each (%(default)s)")
    demo.set_defaults(run=_demo)


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


def _lease(text: str) -> float:
    seconds = _duration(text)
    if not _MIN_LEASE <= seconds <= _MAX_LEASE:
        raise argparse.ArgumentTypeError(
            f"a lease of {text} is not between 1s and 30d: a shorter one would take claims "
            "from workers that are still running them"
        )
    return seconds


def _timeout(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a timeout of {text} is not positive")
    return seconds


def _open(arguments: argparse.Namespace, **settings: Any) -> FileStore:
    """The store the arguments name, with the command's settings and the -o options."""
    if str(arguments.url).lower().startswith("memory://"):
        raise UsageError(
            "a memory:// spool lives inside one process, and each filespool command is a "
            "process of its own: use a local path or s3:// (memory:// works with "
            "`filespool demo --url`)"
        )
    options: dict[str, Any] = {}
    for option in arguments.option:
        key, equals, value = option.partition("=")
        if not equals or not key:
            raise UsageError(f"--option {option!r} is not KEY=VALUE")
        if key in settings:
            raise UsageError(f"-o {key}=... repeats {_SETTINGS.get(key, key)}: give it once")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return FileStore(arguments.url, **settings, **options)


def _init(arguments: argparse.Namespace) -> int:
    if arguments.private:
        if "://" in arguments.url and not arguments.url.startswith("file://"):
            raise UsageError("--private is for local spools (files and folders with modes)")
        arguments.option.append("private=true")
    store = _open(arguments)
    store.prepare()
    print(store.url)
    return 0


def _put(arguments: argparse.Namespace) -> int:
    paths = arguments.files or (["-"] if arguments.lines else [])
    if not paths:
        raise UsageError("put needs a FILE, or - for standard input (or --lines)")
    if paths.count("-") > 1:
        raise UsageError("standard input (-) can be given once")
    store = _open(arguments)
    store.names("new")  # fail now, before anything is read, if the spool is not there
    with ExitStack() as files:
        # Every input opened before anything is delivered: a missing file delivers nothing.
        inputs: list[BinaryIO] = [
            sys.stdin.buffer if path == "-" else files.enter_context(open(path, "rb"))
            for path in paths
        ]
        for file in inputs:
            if not arguments.lines:
                print(store.deliver(file.read()))
                continue
            for batch in _line_batches(file):
                for name in store.deliver_many(batch):  # one barrier per batch
                    print(name)
                sys.stdout.flush()
    return 0


def _line_batches(file: BinaryIO, size: int = 1000) -> Iterator[list[bytes]]:
    """The file's lines (without their newline), `size` at a time."""
    batch: list[bytes] = []
    for line in file:
        batch.append(line[:-1] if line.endswith(b"\n") else line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ls(arguments: argparse.Namespace) -> int:
    end = "\0" if arguments.null else "\n"
    for path in _open(arguments).list(arguments.folder):
        sys.stdout.write(path + end)
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


def _failed(arguments: argparse.Namespace) -> int:
    store = _open(arguments)
    for name in store.names("failed"):
        record = store.record(name)
        if arguments.json:
            print(json.dumps({"name": name, "attempts": record.attempts, "reason": record.reason}))
        else:
            print(f"{name}\t{record.attempts}\t{record.reason or ''}")
    return 0


def _requeue(arguments: argparse.Namespace) -> int:
    if bool(arguments.names) == arguments.all:
        raise UsageError("requeue takes NAMEs or --all (not both, not neither)")
    store = _open(arguments)
    dead = set(store.names("failed"))
    names = sorted(dead) if arguments.all else arguments.names
    missing = [name for name in names if name not in dead]
    if missing:  # checked first: nothing is requeued if any name is wrong
        raise UsageError(f"not in failed/: {', '.join(missing)} (see `filespool failed URL`)")
    for name in names:
        store.requeue(name)
        print(f"requeued {name}")
    return 0


def _work(arguments: argparse.Namespace) -> int:
    command = arguments.command
    if not command:
        raise UsageError("work needs a command: filespool work URL -- COMMAND [ARGS...]")
    _check_runnable(command[0])
    if arguments.json and arguments.output == "inherit":
        raise UsageError("--json keeps standard output for JSON: use --output group or discard")
    if arguments.results is not None and arguments.output != "group":
        raise UsageError("--results takes the commands' output: leave out --output")
    store = _open(arguments, max_attempts=arguments.max_attempts)
    store.names("new")  # fail now, with one line, if the spool is not there
    reporter = _reporter(arguments, store)
    emit = reporter.output
    if arguments.results is not None:
        os.makedirs(arguments.results, exist_ok=True)
        emit = partial(_write_results, arguments.results)
    pool = WorkPool(
        store,
        command,
        jobs=arguments.jobs,
        once=arguments.once,
        lease=arguments.lease,
        report=reporter.outcome,
        timeout=arguments.timeout,
        output=arguments.output,
        emit=emit,
    )
    with _signals_stop(pool, reporter), reporter.showing(pool.tally):
        tally = pool.run()
    reporter.summary(tally)
    if pool.signal is not None:
        return 128 + pool.signal
    return 1 if tally.failed else 0


def _write_results(directory: str, outcome: Outcome, stdout: IO[bytes], stderr: IO[bytes]) -> None:
    """Keep a command's output in `directory`: NAME.out and NAME.err (message names are
    safe file names)."""
    for suffix, spill in ((".out", stdout), (".err", stderr)):
        with open(os.path.join(directory, outcome.name + suffix), "wb") as file:
            shutil.copyfileobj(spill, file)


def _check_runnable(program: str) -> None:
    if shutil.which(program) is not None:
        return
    if os.sep in program and os.path.isfile(program):
        raise UsageError(f"{program!r} is not executable: chmod +x it, or name its interpreter")
    raise UsageError(f"command not found: {program!r}")


def _reporter(arguments: argparse.Namespace, store: FileStore) -> Reporter:
    if arguments.json:
        return JsonReporter(sys.stdout)
    if arguments.quiet:
        return Reporter()
    if sys.stderr.isatty():
        return ProgressReporter(store)
    return LineReporter(sys.stderr)


@contextmanager
def _signals_stop(pool: WorkPool, reporter: Reporter) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        if pool.stop(signum):
            reporter.stopping(pool.tally.running)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _demo(arguments: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="filespool-demo-") as directory:
        url = arguments.url or f"{directory}/spool"
        store = FileStore(url)
        store.prepare()
        threads = store.url.startswith("memory://")
        kind = "threads" if threads else "processes"
        print(
            f"spool {store.url}: {arguments.producers} producer {kind} deliver "
            f"{arguments.messages} messages of {arguments.size} bytes; "
            f"{arguments.consumers} consumer {kind} claim them",
            flush=True,
        )
        result = run_demo(
            store,
            arguments.messages,
            arguments.producers,
            arguments.consumers,
            arguments.size,
            threads=threads,
        )
    rate = len(result.claimed) / result.seconds if result.seconds else float("inf")
    print(f"delivered:    {len(result.delivered)}")
    print(f"claimed:      {len(result.claimed)}")
    print(f"duplicates:   {result.duplicates}")
    print(f"lost:         {result.lost}")
    print(f"exactly once: {'yes' if result.holds else 'NO'}")
    print(f"throughput:   {rate:,.0f} messages/s ({result.seconds:.2f} s end to end)")
    return 0 if result.holds else 1
