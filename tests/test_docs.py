"""Claims the docs make that need more than running their examples."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.slow
def test_the_example_backend_passes_the_contract_as_the_page_says() -> None:
    """docs/writing-a-backend.md shows the example's files and its test run's outcome."""
    page = (DOCS / "writing-a-backend.md").read_text()
    for example in ("dict_backend.py", "test_dict_backend.py"):
        assert f'--8<-- "docs/examples/{example}"' in page
    [claimed] = re.findall(r"^(\d+ passed, \d+ skipped)$", page, re.M)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_dict_backend.py"],
        cwd=DOCS / "examples",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{claimed} in " in result.stdout.splitlines()[-1]


def test_gocept_filestore_readme_passes_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gocept.filestore 1.0's own README doctest (ZPL 2.1, from its sdist), changed only in
    its import and in the line showing the store's repr, passes against filespool: code
    written for gocept.filestore keeps working."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp() is left behind
    readme = Path(__file__).with_name("gocept_filestore_README.txt")
    result = doctest.testfile(str(readme), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert (result.failed, result.attempted) == (0, 38)


def test_the_docs_examples_leave_no_temporary_directories(tmp_path: Path) -> None:
    """The examples call mkdtemp() without cleaning up (as a reader would); the docs'
    test harness must take those directories away."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pages = ["README.md", "docs/index.md", "docs/getting-started.md", "docs/queue.md"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pages],
        cwd=DOCS.parent,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert list(scratch.iterdir()) == []
