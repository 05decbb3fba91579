"""The ``filespool`` command."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from filespool.errors import FileStoreError
from filespool.store import FOLDERS, FileStore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except (FileStoreError, TypeError) as error:
        print(f"filespool: {error}", file=sys.stderr)
        return 2
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filespool",
        description="Maildir-style spools: write in tmp/, publish into new/, claim into cur/.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create a spool (its root and tmp/new/cur)")
    init.add_argument("url", help="a local path, file:///path or memory://name")
    init.set_defaults(run=_init)

    put = commands.add_parser("put", help="deliver files into new/ ('-' reads standard input)")
    put.add_argument("url")
    put.add_argument("files", nargs="+", metavar="FILE")
    put.set_defaults(run=_put)

    ls = commands.add_parser("ls", help="list the files in a folder, oldest first")
    ls.add_argument("url")
    ls.add_argument("folder", nargs="?", default="new", choices=FOLDERS)
    ls.set_defaults(run=_ls)

    cat = commands.add_parser("cat", help="write a file's content to standard output")
    cat.add_argument("url")
    cat.add_argument("name")
    cat.add_argument("folder", nargs="?", default="new", choices=FOLDERS)
    cat.set_defaults(run=_cat)

    demo = commands.add_parser(
        "demo",
        help="run producers and consumers on a spool and verify exactly-once claims",
        description=(
            "Producer processes deliver messages while consumer processes claim, read and "
            "remove them; at the end every delivered message must have been claimed exactly "
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


def _init(arguments: argparse.Namespace) -> int:
    store = FileStore(arguments.url)
    store.prepare()
    print(store.url)
    return 0


def _put(arguments: argparse.Namespace) -> int:
    store = FileStore(arguments.url)
    for path in arguments.files:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
        print(store.deliver(data))
    return 0


def _ls(arguments: argparse.Namespace) -> int:
    for path in FileStore(arguments.url).list(arguments.folder):
        print(path)
    return 0


def _cat(arguments: argparse.Namespace) -> int:
    with FileStore(arguments.url).open(arguments.name, arguments.folder, "rb") as file:
        sys.stdout.buffer.write(file.read())
    return 0


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
    """Deliver ``messages`` with producer processes while consumer processes drain the store."""
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
    pause = 0.001
    while True:
        # Read before claiming: nothing to claim after the producers finished means drained.
        finished = not producing.is_set()
        name = store.claim()
        if name is None:
            if finished:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        pause = 0.001
        with store.open(name, "cur", "rb") as file:
            file.read()
        store.remove(name, "cur")
        claimed.append(name)
    results.put(claimed)
