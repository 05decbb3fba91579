"""The mutation check: break the shipped code on purpose, one named way at a time, and
require the tests to notice. `nox -s mutants` runs it (CI too); it exits 1 if a mutant
survives, or if the tests fail before anything is broken.

Each mutant replaces one exact piece of text in a copy of `src/`, then runs the tests
that guard that piece (with the copy first on PYTHONPATH, child processes included).
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
LOCAL = "filespool/backends/local.py"
MEMORY = "filespool/backends/memory.py"
S3 = "filespool/backends/s3.py"
QUEUE = "filespool/queue.py"


@dataclass(frozen=True)
class Mutant:
    """One way to break the code: in `path` (under src/), `original` becomes `broken`."""

    name: str
    path: str
    original: str
    broken: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "local: a move without RENAME_NOREPLACE overwrites",
        LOCAL,
        "_RENAME_NOREPLACE = 1",
        "_RENAME_NOREPLACE = 0",
        ("tests/test_local.py::TestLocal",),
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
        ("tests/test_local.py::test_a_claim_stalled_between_link_and_unlink_loses_nothing",),
    ),
    Mutant(
        "memory: no lock",
        MEMORY,
        "_STORE_LOCK = threading.RLock()",
        "_STORE_LOCK = __import__('contextlib').nullcontext()",
        ("tests/test_memory.py::TestMemory",),
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
        'self.backend.move("cur", claim.file_name, "cur", successor)',
        'self.backend.info("cur", claim.file_name)\n            successor = claim.file_name',
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: recover gives back without taking over first",
        QUEUE,
        "        try:\n            self.extend(claim)\n        except LeaseLost:\n"
        "            return None  # acked, renewed or taken over since the scan\n",
        "",
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: release writes the record without renewing first",
        QUEUE,
        '        self.extend(claim)\n        return self._give_back(claim, "released")',
        '        return self._give_back(claim, "released")',
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "queue: an ack ignores a claimed file that is gone",
        QUEUE,
        "            if self.is_anywhere(claim.name):\n                raise _lease_lost(claim)"
        " from None\n",
        "            pass\n",
        ("tests/test_memory.py::TestMemory",),
    ),
    Mutant(
        "s3: the multipart completion without its condition",
        S3,
        '**({"IfNoneMatch": "*"} if exclusive else {}),',
        "",
        ("tests/test_s3_moto.py::TestS3Moto", "-k", "never_overwrites or exactly_one_wins"),
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
]


def main() -> int:
    """Check the tests pass as shipped, then that they fail for every mutant."""
    for selection in dict.fromkeys(mutant.tests for mutant in MUTANTS):
        if _run_tests(ROOT / "src", list(selection)) != 0:
            print(f"{' '.join(selection)} fails before anything is broken: fix it first")
            return 1
    print("the selected tests pass as shipped", flush=True)
    survivors = []
    for mutant in MUTANTS:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="filespool-mutant-") as scratch:
            source = Path(scratch) / "src"
            shutil.copytree(ROOT / "src", source)
            _apply(source / mutant.path, mutant)
            status = _run_tests(source, list(mutant.tests))
        killed = status == 1  # tests failed (2+: an error of another kind, not a verdict)
        verdict = "killed" if killed else f"SURVIVED (pytest exit {status})"
        print(f"{verdict:>8}  {mutant.name} ({time.monotonic() - started:.0f} s)", flush=True)
        if not killed:
            survivors.append(mutant.name)
    print(f"{len(MUTANTS) - len(survivors)} of {len(MUTANTS)} mutants killed")
    return 1 if survivors else 0


def _apply(path: Path, mutant: Mutant) -> None:
    text = path.read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(f"{mutant.name}: the text to break is in {path} {count} times, not once")
    path.write_text(text.replace(mutant.original, mutant.broken))


def _run_tests(source: Path, tests: list[str]) -> int:
    environment = dict(os.environ, PYTHONPATH=f"{source}{os.pathsep}{ROOT / 'tests'}")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main())
