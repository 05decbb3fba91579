"""benchmarks/run.py as CI runs it (`--quick`): a message lost or claimed twice fails the
run; a missed timing target does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# What the concurrency section reports when a consumer claims a message another one had.
CLAIMED_TWICE = """
measured = concurrency.run
def claimed_twice(config, log):
    result = measured(config, log)
    result["rows"][-1]["exactly_once"] = False
    return result
concurrency.run = claimed_twice
"""


def _bench(tmp_path: Path, patch: str = "") -> subprocess.CompletedProcess[str]:
    """The concurrency section of a quick run on `tmp_path`, after `patch` (Python run
    with the benchmarks' modules imported)."""
    arguments = ["--quick", "--sections", "concurrency", "--tmpfs-dir", "", "--plot", ""]
    arguments += ["--disk-dir", str(tmp_path), "--json", str(tmp_path / "results.json")]
    driver = (
        f"import sys\nsys.path.insert(0, {str(BENCHMARKS)!r})\nimport concurrency, run\n"
        f"{patch}\nsys.exit(run.main({arguments!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=300
    )


def test_a_quick_run_checks_that_every_message_is_claimed_once(tmp_path: Path) -> None:
    done = _bench(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[met   ] every message claimed exactly once in every concurrent run" in done.stdout


def test_a_message_claimed_twice_fails_the_run(tmp_path: Path) -> None:
    done = _bench(tmp_path, CLAIMED_TWICE)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[MISSED] every message claimed exactly once in every concurrent run: NO" in done.stdout
    assert "FAILED: every message claimed exactly once in every concurrent run" in done.stderr
