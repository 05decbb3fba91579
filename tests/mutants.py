"""The mutation check: break the shipped code on purpose, one named way at a time, and
require the tests to notice. `nox -s mutants` runs it (CI too), and `nox -s s3` runs the
mutants whose tests need LocalStack (`--localstack`); it exits 1 if a mutant survives, or
if the tests fail before anything is broken. `--skip-baseline` leaves out that first run
of the unbroken tests, where the whole suite runs unbroken beside it (CI).

Each mutant replaces one exact piece of text in a copy of `src/` and `docs/examples/`, then
runs the tests that guard that piece (with the copy of `src/` first on PYTHONPATH, child
processes included; the example's tests run from the copy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "src/filespool/backends/local.py"
MEMORY = "src/filespool/backends/memory.py"
S3 = "src/filespool/backends/s3.py"
QUEUE = "src/filespool/queue.py"
EXAMPLE = "docs/examples/dict_backend.py"
COPIED = ("src", "docs/examples")


@dataclass(frozen=True)
class Mutant:
    """One way to break the code: in `path`, `original` becomes `broken`."""

    name: str
    path: str
    original: str
    broken: str
    tests: tuple[str, ...]
    localstack: bool = False
    """Its tests need LocalStack (the S3 copy method): run by `nox -s s3`, which has it."""


RACES = ("-k", "exactly_one_wins or never_both_win")

MUTANTS = [
    Mutant(
        "local: a move without RENAME_NOREPLACE overwrites",
        LOCAL,
        "_RENAME_NOREPLACE = 1",
        "_RENAME_NOREPLACE = 0",
        ("tests/test_local.py::TestLocal", *RACES),
    ),
    Mutant(
        "local link fallback: a copy instead of an exclusive link",
        LOCAL,
        "os.link(source, target)  # link() never replaces an existing name",
        "shutil.copyfile(source, target)",
        ("tests/test_local.py::TestLocalLinkFallback",),
    ),
    Mutant(
        "local link fallback: a mover that lost its source keeps its link",
        LOCAL,
        "            with suppress(FileNotFoundError):\n                os.unlink(target)\n",
        "",
        ("tests/test_local.py", "-k", "take_over_stalled"),
    ),
    Mutant(
        "local: same_file always False (an interrupted claim goes unnoticed)",
        LOCAL,
        "return os.path.samefile(self._path(first, name), self._path(second, name))",
        "return False",
        ("tests/test_local.py::TestLocalLinkFallback", "-k", "interrupted_move"),
    ),
    Mutant(
        "memory: no lock",
        MEMORY,
        "_STORE_LOCK = threading.RLock()",
        "_STORE_LOCK = __import__('contextlib').nullcontext()",
        ("tests/test_memory.py::TestMemory", *RACES),
    ),
    Mutant(
        "the example backend of the docs: no lock",
        EXAMPLE,
        "LOCK = threading.Lock()",
        "LOCK = __import__('contextlib').nullcontext()",
        ("docs/examples/test_dict_backend.py", *RACES),
    ),
    Mutant(
        "memory: a move overwrites its destination",
        MEMORY,
        "            self._require_absent(destination, target)\n",
        "",
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: a renewal keeps the file name (no new generation)",
        QUEUE,
        'yield step.move("cur", claim.file_name, "cur", successor)',
        'yield step.info("cur", claim.file_name)\n            successor = claim.file_name',
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: recover gives back without taking over first",
        QUEUE,
        "        try:\n            yield from self.extend_steps(claim)\n        except LeaseLost:\n"
        "            return None  # acked, renewed or taken over since the scan\n",
        "",
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: release writes the record without renewing first",
        QUEUE,
        "        yield from self.extend_steps(claim)\n"
        "        return (yield from self._give_back(claim, reason, attempt=attempt))",
        "        return (yield from self._give_back(claim, reason, attempt=attempt))",
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: an ack ignores a claimed file that is gone",
        QUEUE,
        "            if (yield from self.is_anywhere(claim.name)):\n"
        "                raise lease_lost(claim) from None\n",
        "            pass\n",
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "s3: the multipart completion without its condition",
        S3,
        '**({"IfNoneMatch": "*"} if exclusive else {}),',
        "",
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "made_just_before_the_copy"),
    ),
    Mutant(
        "s3: the delete after a copy without its condition",
        S3,
        'self._call("delete_object", Key=key, IfMatch=etag)',
        'self._call("delete_object", Key=key)',
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "source_was_replaced"),
    ),
    Mutant(
        "s3: lost answers to conditional writes retried blindly by botocore",
        S3,
        'fs.s3.meta.events.register_first("needs-retry.s3", _no_blind_retry)',
        "pass",
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "answer_is_lost or dropped_answers"),
    ),
    Mutant(
        "s3: aiohttp's silent resend left on",
        S3,
        "session._retry_connection = False  # aiohttp has no public switch for it",
        "pass",
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "dropped_answers"),
    ),
    Mutant(
        "s3: same_file always False (an interrupted claim goes unnoticed)",
        S3,
        "return _moved_from(one, second, other) or _moved_from(other, first, one)",
        "return False",
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "interrupted_move"),
    ),
    Mutant(
        "s3: create's close writes whatever is there now (no If-Match on its placeholder)",
        S3,
        '"put_object", Key=key, Body=data, Metadata=metadata, IfMatch=placeholder.etag',
        '"put_object", Key=key, Body=data, Metadata=metadata',
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "taken_away_while_written"),
    ),
    Mutant(
        "s3: the copy without its condition",
        S3,
        'conditions = {"IfNoneMatch": "*"} if exclusive else {}',
        "conditions = {}",
        (
            "tests/localstack/test_s3_localstack.py",
            "-k",
            "forced_conditional_copy",
        ),
        localstack=True,
    ),
]


def main(arguments: list[str]) -> int:
    """Check the tests pass as shipped, then that they fail for every mutant (`--localstack`:
    the mutants whose tests need LocalStack, else all others)."""
    unknown = set(arguments) - {"--localstack", "--skip-baseline"}
    if unknown:
        print(f"unknown arguments {sorted(unknown)}; known: --localstack, --skip-baseline")
        return 2
    localstack = "--localstack" in arguments
    mutants = [mutant for mutant in MUTANTS if mutant.localstack == localstack]
    baseline = [] if "--skip-baseline" in arguments else [mutant.tests for mutant in mutants]
    for selection in dict.fromkeys(baseline):
        with tempfile.TemporaryDirectory(prefix="filespool-mutant-") as scratch:
            if _run_tests(_copy(Path(scratch)), list(selection)) != 0:
                print(f"{' '.join(selection)} fails before anything is broken: fix it first")
                return 1
    if baseline:
        print("the selected tests pass as shipped", flush=True)
    survivors = []
    for mutant in mutants:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="filespool-mutant-") as scratch:
            copy = _copy(Path(scratch))
            _apply(copy / mutant.path, mutant)
            status = _run_tests(copy, list(mutant.tests))
        killed = status == 1  # tests failed (2+: an error of another kind, not a verdict)
        verdict = "killed" if killed else f"SURVIVED (pytest exit {status})"
        print(f"{verdict:>8}  {mutant.name} ({time.monotonic() - started:.0f} s)", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"{len(mutants) - len(survivors)} of {len(mutants)} mutants killed")
    return 1 if survivors else 0


def _copy(scratch: Path) -> Path:
    """Copy what mutants break into `scratch`; return it."""
    for folder in COPIED:
        shutil.copytree(ROOT / folder, scratch / folder)
    return scratch


def _apply(path: Path, mutant: Mutant) -> None:
    text = path.read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the text to break is in {path} {count} times, not once")
    path.write_text(text.replace(mutant.original, mutant.broken))


def _run_tests(copy: Path, tests: list[str]) -> int:
    environment = dict(os.environ, PYTHONPATH=f"{copy / 'src'}{os.pathsep}{ROOT / 'tests'}")
    # The example's tests run from the copy, so that they import the copy of the example.
    tests = [str(copy / test) if test.startswith("docs/") else test for test in tests]
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
