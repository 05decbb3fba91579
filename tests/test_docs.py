"""Claims the docs make that need more than running their examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


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
